"""The configuration: typed, validated once, unknown keys rejected with their path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nstd.config import SECTIONS, Config, parse_config, to_mapping
from nstd.config_files import apply_override, load_config, merge_overrides
from nstd.config_yaml import default_config_text, scalar
from nstd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def problems_of(mapping: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(mapping)
    return info.value.problems


def test_empty_mapping_gives_the_documented_defaults() -> None:
    config = parse_config({})
    assert config == Config.default()
    assert config.style.content_layer == "relu4_2"
    assert list(config.style.style_layers) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1",
                                               "relu5_1"]
    assert config.model.weights is None and config.video.init == "warped"


def test_shipped_config_yaml_is_the_text_written_from_the_schema() -> None:
    """One source: a description changed in nstd/config.py must reach config.yaml."""
    shipped = (REPO / "config.yaml").read_text()
    assert shipped == default_config_text(), (
        "config.yaml is out of date: nstd check-config --print-defaults > config.yaml")


def test_the_written_config_holds_every_key_with_its_default_and_description() -> None:
    text = default_config_text()
    data = yaml.safe_load(text)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name in data[section], f"config.yaml does not document {section}.{f.name}"
            assert f"# {f.metadata['doc']}\n" in text, f"{section}.{f.name}: doc missing"
    # The file holds exactly the defaults (paths aside, which it resolves).
    assert parse_config(data) == Config.default()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not line.startswith("    ") \
                and line.startswith("  ") and not stripped.endswith(":"):
            assert " # " in line, f"config.yaml line without a comment: {line!r}"


def test_a_time_of_day_is_written_quoted_so_yaml_reads_it_back_as_text() -> None:
    assert scalar("22:00-07:00") == '"22:00-07:00"'
    assert yaml.safe_load(scalar("22:00")) == "22:00"  # unquoted, YAML 1.1 reads 1320
    assert [scalar(v) for v in (None, True, 0.0001, [0.5, 1.0], [])] == [
        "null", "true", "0.0001", "[0.5, 1.0]", "[]"]


# ------------------------------------------------------------- the cluster: section


def test_the_cluster_section_holds_the_ray_keys() -> None:
    config = parse_config({"cluster": {"backend": "ray", "ray_address": "auto",
                                       "wire_format": "png8", "max_unit_frames": 40,
                                       "unit_overlap": 4}})
    assert (config.cluster.backend, config.cluster.ray_address, config.cluster.wire_format,
            config.cluster.max_unit_frames, config.cluster.unit_overlap) == (
        "ray", "auto", "png8", 40, 4)
    assert Config.default().cluster.backend == "local"
    assert problems_of({"cluster": {"backend": "slurm"}}) == [
        "cluster.backend: must be one of local | ray, got 'slurm'"]


@pytest.mark.parametrize(("old", "new"), [
    ("daemon.cluster", "cluster.backend"),
    ("daemon.ray_address", "cluster.ray_address"),
    ("daemon.wire_format", "cluster.wire_format"),
    ("video.max_segment_frames", "cluster.max_unit_frames"),
    ("video.segment_overlap", "cluster.unit_overlap"),
])
def test_a_key_that_moved_to_cluster_names_its_new_place(old: str, new: str,
                                                          tmp_path: Path) -> None:
    section, key = old.split(".")
    path = config_file(tmp_path, f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines() == [f"{path}: {old}: has moved to {new}"]


def test_unknown_keys_and_sections_are_errors_naming_their_path() -> None:
    problems = problems_of({"style": {"iteratons": 10}, "gpu": {}})
    assert any(p.startswith("style.iteratons: unknown key") for p in problems)
    assert any(p.startswith("gpu: unknown section") for p in problems)


def test_every_bad_value_is_reported_together() -> None:
    problems = problems_of({
        "style": {"iterations": "many", "optimizer": "sgd", "tv_weight": -1,
                  "style_layers": {"relu9_9": 1.0}, "scales": [1.0, 0.5]},
        "model": {"device": "gpu", "channels_last": "yes"},
        "video": {"crf": 60},
    })
    joined = "\n".join(problems)
    for path in ("style.iterations", "style.optimizer", "style.tv_weight", "style.style_layers",
                 "model.device", "model.channels_last", "video.crf"):
        assert path in joined, path
    assert "lbfgs | adam" in joined  # says what is allowed


def test_scales_must_ascend_to_one() -> None:
    assert any("style.scales" in p for p in problems_of({"style": {"scales": [1.0, 0.5]}}))
    assert parse_config({"style": {"scales": [0.25, 0.5, 1]}}).style.scales == (0.25, 0.5, 1.0)


def test_integers_are_accepted_where_numbers_are_expected_but_not_booleans() -> None:
    assert parse_config({"style": {"style_weight": 1000}}).style.style_weight == 1000.0
    assert any("style.iterations" in p for p in problems_of({"style": {"iterations": True}}))


def test_init_image_is_required_for_image_init() -> None:
    assert any("style.init_image" in p for p in problems_of({"style": {"init": "image"}}))


def test_set_overrides_are_typed_like_yaml(tmp_path: Path) -> None:
    mapping: dict = {}
    apply_override(mapping, "style.iterations=25")
    apply_override(mapping, "style.preserve_color=true")
    apply_override(mapping, "style.scales=[0.5, 1.0]")
    config = parse_config(mapping)
    assert config.style.iterations == 25 and config.style.preserve_color is True
    with pytest.raises(ConfigError):
        apply_override({}, "iterations")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("daemon:\n  inbox: in\nmodel:\n  weights: w.pth\n")
    config = load_config(tmp_path / "c.yaml", cwd=Path("/"))
    assert config.daemon.inbox == str(tmp_path / "in")
    assert config.model.weights == str(tmp_path / "w.pth")


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("style:\n  colour: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(bad) in str(info.value) and "style.colour" in str(info.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("style: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_without_a_file_the_defaults_apply(tmp_path: Path) -> None:
    assert load_config(None, cwd=tmp_path).style == Config.default().style


def test_sidecar_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    base = parse_config({"style": {"iterations": 10}})
    merged = merge_overrides(base, {"style": {"max_side": 64}}, tmp_path)
    assert merged.style.max_side == 64 and merged.style.iterations == 10
    with pytest.raises(ConfigError, match="style.nope"):
        merge_overrides(base, {"style": {"nope": 1}}, tmp_path)


def test_to_mapping_round_trips() -> None:
    config = parse_config({"style": {"scales": [0.5, 1.0]}})
    assert parse_config(to_mapping(config)) == config


# ------------------------------------------------------------- where a problem was written


def config_file(folder: Path, text: str = "style:\n  max_side: 256\n") -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def cli_config_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    from nstd.cli.main import main

    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("nstd: config error: ") for line in lines), lines
    return [line.removeprefix("nstd: config error: ") for line in lines]


def test_a_set_typo_names_the_set_and_the_nearest_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not the config file, which holds no such key: the --set as the user typed it."""
    path = config_file(tmp_path)
    errors = cli_config_errors(["check-config", "--config", str(path), "--set",
                                "style.max_sid=128"], capsys)
    assert errors == ["--set style.max_sid=128: style.max_sid: unknown key; "
                      "did you mean style.max_side?"]


def test_a_typo_in_the_file_names_the_file_and_the_nearest_key(tmp_path: Path) -> None:
    path = config_file(tmp_path, "style:\n  iteratons: 10\nstlye:\n  max_side: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["video.crf=20"])
    assert sorted(info.value.lines()) == [
        f"{path}: stlye: unknown section; did you mean style?",
        f"{path}: style.iteratons: unknown key; did you mean style.iterations?",
    ]


def test_each_problem_names_its_own_origin(tmp_path: Path) -> None:
    """One file problem, one --set problem, a section only an override brought in, and the
    words of --device: every problem travels with where it was written."""
    path = config_file(tmp_path, "video:\n  crf: 99\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["stlye.max_side=64", "style.iterations=-1",
                           ("model.device=gpu", "--device gpu")])
    assert sorted(info.value.lines()) == sorted([
        f"{path}: video.crf: must be <= 51, got 99",
        "--set stlye.max_side=64: stlye: unknown section; did you mean style?",
        "--set style.iterations=-1: style.iterations: must be >= 0, got -1",
        "--device gpu: model.device: must be auto, cpu, cuda or cuda:N, got 'gpu'",
    ])


def test_a_key_of_another_section_is_pointed_there() -> None:
    problems = problems_of({"style": {"frame_iterations": 5}})
    assert problems == ["style.frame_iterations: unknown key; did you mean "
                        "video.frame_iterations?"]


def test_nothing_near_lists_what_is_allowed() -> None:
    (problem,) = problems_of({"style": {"zzz": 1}})
    assert problem.startswith("style.zzz: unknown key (allowed: content_layer, ")


def test_a_sidecar_typo_names_the_sidecar_and_the_nearest_key(tmp_path: Path) -> None:
    from nstd.daemon.intake import take

    config = parse_config({}, base_dir=tmp_path)
    inbox = Path(config.daemon.inbox)
    inbox.mkdir(parents=True)
    styles = Path(config.daemon.styles)
    styles.mkdir()
    from nstd.testing.media import write_test_image

    write_test_image(styles / "mosaic.png", size=(8, 8))
    photo = write_test_image(inbox / "photo.png", size=(8, 8))
    (inbox / "photo.png.yaml").write_text("style:\n  max_sid: 64\nvidoe:\n  crf: 20\n")
    intake = take(inbox, photo, config)
    assert intake.error == ("sidecar photo.png.yaml: vidoe: unknown section; did you mean "
                            "video?; style.max_sid: unknown key; did you mean style.max_side?")


def test_merge_overrides_names_the_origin_it_is_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        merge_overrides(Config.default(), {"video": {"crf": 70}}, tmp_path, "sidecar a.yaml")
    assert info.value.lines() == ["sidecar a.yaml: video.crf: must be <= 51, got 70"]

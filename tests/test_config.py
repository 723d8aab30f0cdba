"""The configuration: typed, validated once, unknown keys rejected with their path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nstd.config import (
    SECTIONS,
    Config,
    apply_override,
    load_config,
    merge_overrides,
    parse_config,
    to_mapping,
)
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


def test_shipped_config_yaml_documents_every_key_with_its_default() -> None:
    text = (REPO / "config.yaml").read_text()
    data = yaml.safe_load(text)
    for section, cls in SECTIONS.items():
        for key in (f.name for f in dataclasses.fields(cls)):
            assert key in data[section], f"config.yaml does not document {section}.{key}"
    # The shipped file holds exactly the defaults (paths aside, which it resolves).
    assert parse_config(data) == Config.default()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not line.startswith("    ") \
                and line.startswith("  ") and not stripped.endswith(":"):
            assert "#" in line, f"config.yaml line without a comment: {line!r}"


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

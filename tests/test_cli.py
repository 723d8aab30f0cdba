"""The `nstd` command: stylize, check-config, weights; exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstd.cli.main import main

FAST = ["--set", "style.max_side=40", "--set", "style.iterations=6",
        "--set", "style.coarse_iterations=3", "--set", "style.min_scale_side=16"]


def write_png(path: Path, size: tuple[int, int] = (48, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "nstd", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    return write_png(tmp_path / "photo.png", seed=1)


@pytest.fixture()
def painting(tmp_path: Path) -> Path:
    return write_png(tmp_path / "painting.png", size=(40, 40), seed=2)


def test_stylize_end_to_end_in_a_subprocess(tmp_path: Path, photo: Path, painting: Path,
                                            vgg_weights_path: Path) -> None:
    result = run_cli("stylize", str(photo), "--style", str(painting), "--weights",
                     str(vgg_weights_path), "--json", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = tmp_path / "photo.painting.png"  # <stem>.<style-stem>.<ext> next to the input
    assert Path(report["output"]) == out and out.is_file()
    for key in ("initial_loss", "final_loss", "iterations", "seconds", "losses"):
        assert key in report
    assert report["final_loss"] < 0.5 * report["initial_loss"]
    assert {"content", "style", "tv", "total"} <= set(report["losses"])
    with Image.open(out) as image:
        assert image.size == (40, 27)  # longest side limited by style.max_side, aspect kept
    assert "\r" not in result.stderr  # not a terminal: plain lines, no bar


def test_one_loss_figure_in_progress_summary_and_json(tmp_path: Path, photo: Path,
                                                     painting: Path,
                                                     vgg_weights_path: Path) -> None:
    """The last progress line, the summary line and --json give the same final loss."""
    common = ["stylize", str(photo), "--style", str(painting), "--weights",
              str(vgg_weights_path), *FAST, "--set", "style.tolerance=0.2",
              "--set", "style.tolerance_window=2"]  # early stopping: a closing line is due
    as_json = run_cli(*common, "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    last_progress = [line for line in as_json.stderr.splitlines() if "loss" in line][-1]
    assert f"loss {report['final_loss']:.4g}" in last_progress
    plain = run_cli(*common, "-o", str(tmp_path / "again.png"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    summary = [line for line in plain.stderr.splitlines() if "wrote" in line][-1]
    assert f"-> {report['final_loss']:.4g}," in summary
    assert f"loss {report['initial_loss']:.4g} ->" in summary


def test_existing_output_is_never_overwritten_without_the_flag(
        tmp_path: Path, photo: Path, painting: Path, vgg_weights_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken.png"
    out.write_bytes(b"precious")
    args = ["stylize", str(photo), "--style", str(painting), "-o", str(out),
            "--weights", str(vgg_weights_path), *FAST]
    assert main(args) == 1
    assert out.read_bytes() == b"precious"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nstd: ") and "--overwrite" in err[-1]
    assert main([*args, "--overwrite"]) == 0
    assert out.read_bytes() != b"precious"


def test_a_video_resumed_with_other_settings_asks_for_restart(
        tmp_path: Path, painting: Path, vgg_weights_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from nstd.testing.media import write_test_clip

    clip = write_test_clip(tmp_path / "clip.mp4", frames=3, size=(48, 32))
    out = tmp_path / "clip.out.mp4"
    work = tmp_path / f".{out.name}.nstd-work"  # where the CLI keeps a video's frames
    args = ["stylize", str(clip), "--style", str(painting), "-o", str(out),
            "--weights", str(vgg_weights_path), *FAST]
    assert main(args) == 0
    out.unlink()
    work.mkdir()
    (work / "manifest.json").write_text('{"version": 1, "fingerprint": {"old": true}}')
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "other settings" in err[-1] and err[-1].endswith("rerun with --restart to start over")
    assert main([*args, "--restart"]) == 0 and out.is_file()


def bad_images(folder: Path) -> dict[str, Path]:
    good = write_png(folder / "good-source.png", size=(64, 64))
    data = good.read_bytes()
    cases = {
        "zero bytes": folder / "empty.png",
        "text named .png": folder / "text.png",
        "truncated PNG": folder / "truncated.png",
        "truncated JPEG": folder / "truncated.jpg",
        "40000x40000 header": folder / "bomb.png",
    }
    cases["zero bytes"].write_bytes(b"")
    cases["text named .png"].write_text("this is not an image\n")
    cases["truncated PNG"].write_bytes(data[: len(data) // 2])
    Image.open(good).convert("RGB").save(folder / "full.jpg", quality=90)
    jpeg = (folder / "full.jpg").read_bytes()
    cases["truncated JPEG"].write_bytes(jpeg[: len(jpeg) // 2])
    cases["40000x40000 header"].write_bytes(png_header_only(40000, 40000))
    return cases


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring a huge image, with one tiny IDAT: never decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_each_bad_input_gives_one_line_exit_1_and_writes_nothing(
        tmp_path: Path, painting: Path, vgg_weights_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for case, path in bad_images(tmp_path).items():
        before = listing(tmp_path)
        out = tmp_path / f"out-{path.stem}.png"
        code = main(["stylize", str(path), "--style", str(painting), "-o", str(out),
                     "--weights", str(vgg_weights_path), *FAST])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, case
        assert len(err) >= 1 and err[-1].startswith("nstd: ") and path.name in err[-1], (case, err)
        assert "Traceback" not in "\n".join(err), case
        assert listing(tmp_path) == before, f"{case}: something was written"


def test_unreadable_style_image_is_a_one_line_error(tmp_path: Path, photo: Path,
                                                    vgg_weights_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    style = tmp_path / "style.png"
    style.write_text("not a picture")
    code = main(["stylize", str(photo), "--style", str(style), "--weights",
                 str(vgg_weights_path), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "style image" in err and "style.png" in err
    assert not (tmp_path / "photo.style.png").exists()


def test_missing_weights_file_names_the_file_and_the_fix(tmp_path: Path, photo: Path,
                                                         painting: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    missing = tmp_path / "nowhere" / "vgg19.pth"
    code = main(["stylize", str(photo), "--style", str(painting), "--weights", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and str(missing) in err[-1]


def test_check_config_catches_unknown_keys_and_names_their_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("style:\n  iteratons: 10\nvideo:\n  crf: 99\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "style.iteratons: unknown key" in err and "video.crf: must be <= 51" in err
    styles = Path(__file__).resolve().parent.parent / "styles"  # the default style is there
    config.write_text(f"style:\n  iterations: 10\ndaemon:\n  styles: {styles}\n")
    assert main(["check-config", "--config", str(config)]) == 0


def test_the_shipped_config_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = Path(__file__).resolve().parent.parent / "config.yaml"
    assert main(["check-config", "--config", str(shipped)]) == 0


def test_print_defaults_writes_the_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = Path(__file__).resolve().parent.parent / "config.yaml"
    assert main(["check-config", "--print-defaults"]) == 0
    assert capsys.readouterr().out == shipped.read_text()


def test_bad_set_override_is_a_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--set", "style.iterations=lots"]) == 2
    assert "style.iterations" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, photo: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stylize", str(photo), "--style", str(tmp_path / "missing.png")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["stylize", str(photo)])  # --style is required
    assert info.value.code == 2
    assert main(["stylize", str(photo), "--style", str(photo), "--style", str(photo),
                 "--style-weights", "1"]) == 2


def test_weights_command_verifies_a_local_file(vgg_weights_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "--weights", str(vgg_weights_path)]) == 0
    assert "verified" in capsys.readouterr().out

"""The benchmark scripts run and report what they promise (tiny sizes, slim network)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_writes_both_videos_and_the_figures(tmp_path: Path, vgg_weights_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    compare = load("compare")
    out = tmp_path / "out"
    assert compare.main(["--weights", str(vgg_weights_path), "--device", "cpu",
                         "--clip-size", "64x48", "--max-side", "32", "--frames", "3",
                         "--cold-iterations", "4", "--set", "video.frame_iterations=2",
                         "--out", str(out)]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert (out / "baseline.mp4").is_file() and (out / "nstd.mp4").is_file()
    for side in ("baseline", "nstd"):
        for key in ("seconds_per_frame", "iterations_per_frame", "mean_loss", "ewarp",
                    "device"):
            assert key in report[side], (side, key)
    assert report["baseline"]["iterations_per_frame"] == 4
    assert report["nstd"]["iterations_per_frame"] == pytest.approx((4 + 2 * 2) / 3)
    # The baseline's own loss and the shared evaluator agree: same definition.
    assert report["loss_definition_check"]["relative_difference"] < 1e-4
    assert set(report["targets"]) == {"speedup_at_least_5x", "mean_loss_at_most_1.05x",
                                      "ewarp_at_most_one_fifth"}
    # The weights given (a random slim file here) are named; only a run without --weights
    # generates its own and says so.
    assert report["weights_given"] is True and report["weights"] == str(vgg_weights_path)
    assert "seconds per frame" in capsys.readouterr().out


def test_gpu_check_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sync_check_says_not_applicable_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "sync_check.py"), "--device",
                             "cpu", "--json", str(tmp_path / "sync.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "not applicable" in json.loads((tmp_path / "sync.json").read_text())["result"]

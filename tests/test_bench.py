"""The benchmark scripts run and report what they promise (tiny sizes, slim network)."""

from __future__ import annotations

import importlib.util
import json
import os
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
                         "--set", "video.frame_target=0",  # every warm frame its full budget
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


def test_gpu_check_quick_dry_run_runs_every_step_and_writes_its_figures(tmp_path: Path) -> None:
    """bench/gpu_check.sh --quick: the GPU script's own dry run (CPU, slim network, tiny
    sizes, no compile step), so a broken step or command line shows here, not on the
    rented GPU. On CPU the sync check must say it does not apply."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "NSTD_GPU_CHECK_PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--quick"],
                            capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else result.stderr
    assert result.returncode == 0, log[-4000:]
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert {name: step["exit"] for name, step in steps.items()} == {
        "iteration": 0, "sync": 0, "fps": 0, "compare": 0,
        "iteration_compiled": "skipped: --quick"}, log[-4000:]
    env_facts = json.loads((out / "env.json").read_text())
    assert env_facts["dry_run"] is True and env_facts["pyav"] is True
    rows = json.loads((out / "iteration.json").read_text())["results"]
    assert {r["precision"] for r in rows} == {"fp32", "bf16"}
    assert all(r["ms_per_iteration"] > 0 for r in rows)
    assert "not applicable" in json.loads((out / "sync.json").read_text())["result"]
    assert json.loads((out / "fps.json").read_text())["runs"]
    compare = json.loads((out / "compare.json").read_text())
    assert compare["weights_given"] is True and compare["weights"].endswith("vgg19-slim.pth")


def test_eta_trace_sets_each_eta_beside_the_real_remaining_time(
        tmp_path: Path, vgg_weights_path: Path, capsys: pytest.CaptureFixture) -> None:
    eta_trace = load("eta_trace")
    out = tmp_path / "eta.json"
    assert eta_trace.main(["--weights", str(vgg_weights_path), "--size", "48x32", "--frames",
                           "4", "--set", "style.iterations=4", "--set",
                           "style.coarse_iterations=2", "--set", "style.min_scale_side=16",
                           "--set", "video.frame_iterations=2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["done"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["eta_seconds"] is None  # the cold frame: the warm ones are not measured
    assert all(r["eta_seconds"] is not None for r in rows[1:])
    assert rows[-1]["real_remaining_seconds"] == 0
    assert "unknown" in capsys.readouterr().out


def test_ledger_bench_times_every_status_reader_and_checks_the_counters(
        capsys: pytest.CaptureFixture) -> None:
    """bench/ledger.py on a small ledger (the real run has 100,000 finished jobs): it builds
    the ledger through the real schema, serves it and times each reader."""
    bench = load("ledger")
    bench.main(["--jobs", "300", "--repeat", "2"])  # the 100 ms verdict is the real run's
    text = capsys.readouterr().out
    for reader in ("GET /metrics", "GET /api/status.json", "nstd status",
                   "(Ledger.recount: a full scan)"):
        assert f"\n{reader} " in text, reader
    assert "300 finished jobs" in text and "counters equal a recount: True" in text

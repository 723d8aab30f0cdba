"""The memory budget: tiles chosen to fit it, and the peak that a run really reaches.

Peaks are measured in fresh subprocesses (`nstd.testing.memprobe`: the kernel's high-water
mark, reset before the run). The network is the half-width random VGG-19 up to relu3_1 and
L-BFGS keeps one pair, so the activations, which tiling bounds, dominate the image-sized
state, which it cannot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.memory import min_core_side
from nstd.engine.stylizer import Stylizer
from nstd.engine.weights import load_vgg19_state_dict
from nstd.testing.weights import write_random_vgg19

REPO = Path(__file__).resolve().parent.parent
LAYERS = "relu2_1,relu1_1,relu2_1,relu3_1"


def probe(weights: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "nstd.testing.memprobe", "--weights",
                          str(weights), "--size", "512", "--history", "1", "--iterations", "1",
                          "--layers", LAYERS, *extra], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_stays_under_its_memory_budget(tmp_path) -> None:
    weights = write_random_vgg19(tmp_path / "half.pth", width_divisor=2)
    untiled = probe(weights)
    budget_gb = 0.1
    tiled = probe(weights, "--budget", str(budget_gb))
    assert untiled["tiles"] == 1 and untiled["peak_mb"] > budget_gb * 1024  # needs tiling
    assert tiled["tiles"] > 1
    assert tiled["peak_mb"] <= budget_gb * 1024, (tiled, untiled)
    assert tiled["final_loss"] == pytest.approx(untiled["final_loss"], rel=1e-4)
    print(f"untiled {untiled}\ntiled {tiled}")  # the figures, with pytest -s


@pytest.fixture(scope="module")
def stylizer_for(vgg_weights_path):
    state = load_vgg19_state_dict(vgg_weights_path)

    def make(budget) -> Stylizer:
        style = dataclasses.replace(parse_config({}).style, scales=(1.0,), iterations=1)
        features = VGGFeatures(state, [style.content_layer, *style.style_layers])
        return Stylizer(features, style, torch.device("cpu"), max_memory_gb=budget)

    return make


def test_the_tile_size_follows_the_budget_and_halving_it_gives_smaller_tiles(
        stylizer_for) -> None:
    size = (2000, 3000)
    assert len(stylizer_for(None).tiles(size)) == 1
    assert len(stylizer_for(1000.0).tiles(size)) == 1  # fits: no tiling
    cores = []
    for budget in (8.0, 4.0, 2.0):
        tiles = stylizer_for(budget).tiles(size)
        cores.append(max(t.core[1] - t.core[0] for t in tiles))
    assert cores[0] > cores[1] > cores[2] >= min_core_side(
        ("relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"))


def test_a_budget_too_small_uses_the_smallest_tiles_and_says_so(stylizer_for, caplog) -> None:
    tiles = stylizer_for(0.01).tiles((2000, 3000))
    assert max(t.core[1] - t.core[0] for t in tiles) == 160
    assert "too small" in caplog.text and "model.max_memory_gb" in caplog.text


def test_the_oom_retry_keeps_the_output_size_with_smaller_tiles(stylizer_for) -> None:
    """What the daemon does after running out of memory (nstd.daemon.failures.Failures.shrink):
    the same image with half the budget: smaller tiles, the same output size."""
    content = torch.rand(1, 3, 400, 520, generator=torch.Generator().manual_seed(0))
    results = []
    for budget in (0.25, 0.25 / 2):
        stylizer = stylizer_for(budget)
        results.append((len(stylizer.tiles((400, 520))), stylizer.run(
            content, stylizer.prepare_style([torch.rand(1, 3, 64, 64)], [1.0]))))
    (tiles_a, first), (tiles_b, second) = results
    assert 1 < tiles_a < tiles_b
    assert first.image.shape == second.image.shape == (1, 3, 400, 520)


def test_auto_budget_is_a_share_of_the_available_memory() -> None:
    from nstd.engine.memory import GIB, available_bytes, resolve_budget

    cpu = torch.device("cpu")
    available = available_bytes(cpu)
    assert available > 0
    auto = resolve_budget("auto", 0.5, cpu)
    assert auto is not None and abs(auto - available / 2) < 0.05 * available
    assert resolve_budget(2.5, 0.5, cpu) == int(2.5 * GIB)
    assert resolve_budget(None, 0.5, cpu) is None


def test_config_takes_auto_or_a_number_of_gib() -> None:
    from nstd.errors import ConfigError

    assert parse_config({}).model.max_memory_gb == "auto"
    assert parse_config({"model": {"max_memory_gb": 6}}).model.max_memory_gb == 6.0
    with pytest.raises(ConfigError, match="model.max_memory_gb"):
        parse_config({"model": {"max_memory_gb": "lots"}})
    with pytest.raises(ConfigError, match="model.auto_memory_share: must be <= 1.0"):
        parse_config({"model": {"auto_memory_share": 2}})

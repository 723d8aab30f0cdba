"""The engine's speed-related mechanics: lagged loss reads, per-run early stopping, the best
evaluated image kept, recovery from a non-finite evaluation. Tiny images, slim random network."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.optim import BoxLBFGS
from nstd.engine.stylizer import Stylizer
from nstd.engine.weights import load_vgg19_state_dict

CPU = torch.device("cpu")


def image(seed: int, h: int = 32, w: int = 48) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")


@pytest.fixture(scope="module")
def features(vgg_weights_path) -> VGGFeatures:
    style = parse_config({}).style
    return VGGFeatures(load_vgg19_state_dict(vgg_weights_path),
                       [style.content_layer, *style.style_layers])


def make(features: VGGFeatures, lag: int = 0, **overrides) -> Stylizer:
    defaults = {"iterations": 20, "scales": (1.0,), "min_scale_side": 16, "tolerance": 0.0}
    style = dataclasses.replace(parse_config({}).style, **{**defaults, **overrides})
    return Stylizer(features, style, CPU, lag=lag)


def run(stylizer: Stylizer, **kwargs):
    target = stylizer.prepare_style([image(1, 40, 40)], [1.0])
    return stylizer.run(image(0), target, **kwargs)


def test_lagged_reads_stop_exactly_lag_iterations_later(features) -> None:
    exact, lagged = [], []
    a = run(make(features), tolerance=0.5, tolerance_window=2, iterations=40,
            progress=exact.append)
    b = run(make(features, lag=3), tolerance=0.5, tolerance_window=2, iterations=40,
            progress=lagged.append)
    assert a.stopped_early and b.stopped_early
    assert b.iterations == a.iterations + 3  # deterministic: seen late, stopped late
    assert [p.iteration for p in lagged] == list(range(1, b.iterations + 1))  # all reported
    assert [p.loss for p in lagged[:a.iterations]] == pytest.approx([p.loss for p in exact])


def test_run_overrides_early_stopping(features) -> None:
    stylizer = make(features, tolerance=0.0)
    assert not run(stylizer, iterations=30).stopped_early
    result = run(stylizer, iterations=30, tolerance=0.5, tolerance_window=2)
    assert result.stopped_early and result.iterations < 30
    with pytest.raises(ValueError):
        run(stylizer, tolerance_window=0)


def test_the_returned_image_is_the_best_evaluated_one(features, monkeypatch) -> None:
    """A last trial point that lands far off is never returned: the result is the image with
    the lowest loss among those evaluated, and its loss is the last one progress reported
    (the box keeps every evaluated image valid, so nothing is clamped afterwards)."""
    stylizer = make(features, iterations=8)
    original = BoxLBFGS.step

    def wild_last_step(self, closure):
        loss = original(self, closure)
        if self.evaluations == 8:
            self.x.data.add_(torch.randn_like(self.x) * 5.0)  # a wild jump, never evaluated
        return loss

    monkeypatch.setattr(BoxLBFGS, "step", wild_last_step)
    reports = []
    result = run(stylizer, progress=reports.append)
    assert result.final_loss == pytest.approx(reports[-1].loss, rel=1e-5)
    assert result.final_loss <= min(p.loss for p in reports) * (1 + 1e-5)
    assert result.final_loss < result.initial_loss


def test_a_non_finite_evaluation_is_survived(features, monkeypatch) -> None:
    """An overflow in one evaluation is a rejected trial: the search backtracks and goes on."""
    stylizer = make(features, iterations=12)
    calls = {"n": 0}
    original = Stylizer._terms

    def overflow_once(self, problem, x):
        terms = original(self, problem, x)
        calls["n"] += 1
        if calls["n"] == 5 and x.requires_grad:
            terms = [terms[0] * float("inf"), *terms[1:]]
        return terms

    monkeypatch.setattr(Stylizer, "_terms", overflow_once)
    result = run(stylizer)
    assert result.iterations == 12 and torch.isfinite(result.image).all()
    assert result.final_loss < result.initial_loss

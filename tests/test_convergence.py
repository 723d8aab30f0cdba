"""Convergence per network evaluation, on pairs of different character, whatever the scale.

The full-width panel at 64-256 px lives in bench/convergence.py; these run the same engine
with a slim random network at 32 px so they finish in seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.stylizer import Stylizer
from nstd.engine.weights import load_vgg19_state_dict
from nstd.testing.panel import PANEL, SMALL_PANEL, make_image

CPU = torch.device("cpu")
SIDE = 32


@pytest.fixture(scope="module")
def features(vgg_weights_path) -> VGGFeatures:
    style = parse_config({}).style
    return VGGFeatures(load_vgg19_state_dict(vgg_weights_path),
                       [style.content_layer, *style.style_layers])


def relative_curve(features: VGGFeatures, content: torch.Tensor, style_image: torch.Tensor,
                   evaluations: int, weight_factor: float = 1.0) -> list[float]:
    """Loss of the best image after each evaluation, relative to the start (shipped weights
    times `weight_factor`, no coarse-to-fine, no early stopping)."""
    base = parse_config({}).style
    style = dataclasses.replace(base, scales=(1.0,), tolerance=0.0,
                                content_weight=base.content_weight * weight_factor,
                                style_weight=base.style_weight * weight_factor,
                                tv_weight=base.tv_weight * weight_factor)
    stylizer = Stylizer(features, style, CPU)
    target = stylizer.prepare_style([style_image], [1.0])
    seen: list[float] = []
    result = stylizer.run(content, target, iterations=evaluations, coarse_to_fine=False,
                          progress=lambda p: seen.append(p.loss))
    assert result.iterations == evaluations == len(seen)  # one evaluation per iteration
    return [v / result.initial_loss for v in seen]


def test_the_panel_pairs_differ_in_character() -> None:
    """Dark and sparse, textured, high contrast...: a panel of look-alikes would prove
    nothing. Mean brightness and contrast spread widely over the styles."""
    styles = {pair.style for pair in PANEL}
    means = [float(make_image(name, 32, 32).mean()) for name in styles]
    stds = [float(make_image(name, 32, 32).std()) for name in styles]
    assert len(styles) >= 10
    assert min(means) < 0.15 and max(means) > 0.55
    assert min(stds) < 0.12 and max(stds) > 0.4


@pytest.mark.parametrize("pair", SMALL_PANEL, ids=lambda p: p.name)
def test_the_engine_halves_the_loss_within_50_evaluations(features, pair) -> None:
    content, style_image = pair.images(SIDE)
    curve = relative_curve(features, content, style_image, 50)
    assert curve[-1] <= 0.5
    assert all(b <= a for a, b in zip(curve, curve[1:], strict=False))  # best so far


@pytest.mark.parametrize("k", [-3, -1, 2, 3])
def test_the_loss_scale_does_not_change_progress(features, k: int) -> None:
    """All loss weights times 10^k is the same problem: the relative loss after 20
    evaluations moves by less than 5 % (fixed-step L-BFGS went from 0.04 to 0.98 here)."""
    for pair in SMALL_PANEL[:2]:
        content, style_image = pair.images(SIDE)
        plain = relative_curve(features, content, style_image, 20)
        scaled = relative_curve(features, content, style_image, 20, weight_factor=10.0 ** k)
        assert scaled[-1] == pytest.approx(plain[-1], rel=0.05)


@pytest.mark.parametrize("layout", ["transposed view", "channels_last"])
def test_any_tensor_layout_is_accepted(features, layout: str) -> None:
    content, style_image = SMALL_PANEL[0].images(SIDE)
    if layout == "transposed view":
        content = content.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        content = content.contiguous(memory_format=torch.channels_last)
    assert not content.is_contiguous()
    stylizer = Stylizer(features, dataclasses.replace(parse_config({}).style, scales=(1.0,)),
                        CPU)
    target = stylizer.prepare_style([style_image], [1.0])
    before = content.clone()
    result = stylizer.run(content, target, iterations=5)
    assert result.final_loss < result.initial_loss
    assert torch.equal(content, before)  # the caller's tensor is untouched

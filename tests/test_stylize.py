"""The optimization engine on tiny images with a width-reduced random VGG-19.

Random weights say nothing about visual quality; these tests check the mechanics.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.stylizer import (
    Stylizer,
    TemporalTerm,
    build_stylizer,
    resolve_device,
    rgb_to_yiq,
)
from nstd.engine.weights import load_vgg19_state_dict
from nstd.errors import ConfigError, Interrupted, NstdError, UsageError

CPU = torch.device("cpu")


def image(seed: int, h: int = 32, w: int = 48, low: float = 0.0, high: float = 1.0):
    """(1, 3, h, w) smooth-ish random image in [low, high]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 4), max(2, w // 4), generator=gen)
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
    return low + (high - low) * up


@pytest.fixture(scope="module")
def state(vgg_weights_path):
    return load_vgg19_state_dict(vgg_weights_path)


@pytest.fixture()
def make(state):
    """make(**style_overrides) -> Stylizer on the CPU (few iterations, no coarse scales)."""

    def factory(precision: str = "fp32", channels_last: bool = False, pooling: str = "max",
                sync_every: int = 1, **overrides) -> Stylizer:
        defaults = {"iterations": 20, "coarse_iterations": 5, "scales": (1.0,),
                    "min_scale_side": 16, "tolerance": 0.0}
        style = dataclasses.replace(parse_config({}).style, **{**defaults, **overrides})
        features = VGGFeatures(state, [style.content_layer, *style.style_layers],
                               pooling=pooling)
        return Stylizer(features, style, CPU, precision=precision,
                        channels_last=channels_last, sync_every=sync_every)

    return factory


def stylize(stylizer: Stylizer, content=None, styles=None, blend=None, **kwargs):
    content = image(0) if content is None else content
    styles = [image(1, 40, 40)] if styles is None else styles
    target = stylizer.prepare_style(styles, blend or [1.0] * len(styles))
    return stylizer.run(content, target, **kwargs)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_loss_decreases(make, optimizer) -> None:
    result = stylize(make(optimizer=optimizer, learning_rate=0.05, iterations=30))
    assert result.final_loss < 0.5 * result.initial_loss
    assert result.iterations == 30 and not result.stopped_early
    assert result.image.shape == (1, 3, 32, 48) and result.image.dtype == torch.float32
    assert result.image.device.type == "cpu"
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert set(result.losses) == {"content", "style", "tv", "total"}
    assert result.losses["total"] == pytest.approx(
        result.losses["content"] + result.losses["style"] + result.losses["tv"], rel=1e-5)


def test_full_width_vgg19_at_tiny_size(full_vgg_weights_path) -> None:
    style = dataclasses.replace(parse_config({}).style, iterations=5, scales=(1.0,))
    model = dataclasses.replace(parse_config({}).model, device="cpu")
    stylizer = build_stylizer(model, style, weights_override=str(full_vgg_weights_path))
    assert stylizer.features.channels("relu5_1") == 512
    result = stylize(stylizer, content=image(0, 32, 32), styles=[image(1, 32, 32)])
    assert result.final_loss < result.initial_loss


def test_final_loss_is_that_of_the_returned_image(make) -> None:
    stylizer = make()
    content = image(0)
    target = stylizer.prepare_style([image(1, 40, 40)], [1.0])
    result = stylizer.run(content, target)
    assert stylizer.evaluate(result.image, content, target)["total"] == pytest.approx(
        result.final_loss, rel=1e-5)


def test_same_seed_same_result(make) -> None:
    first = stylize(make(init="noise", seed=3))
    second = stylize(make(init="noise", seed=3))
    other = stylize(make(init="noise", seed=4))
    assert torch.equal(first.image, second.image)
    assert not torch.equal(first.image, other.image)


def test_init_override_and_zero_iterations(make) -> None:
    start = image(7, 16, 24)  # resized to the content's size
    result = stylize(make(), init=start, iterations=0)
    assert result.iterations == 0
    expected = torch.nn.functional.interpolate(start, size=(32, 48), mode="bilinear")
    torch.testing.assert_close(result.image, expected.clamp(0, 1))
    assert result.initial_loss == pytest.approx(result.final_loss, rel=1e-5)


def test_init_image_without_image_is_usage_error(make) -> None:
    with pytest.raises(UsageError, match="init_image"):
        stylize(make(init="image", init_image="x.png"))


def test_caller_tensors_untouched(make) -> None:
    content, style, start = image(0), image(1, 40, 40), image(2)
    copies = [t.clone() for t in (content, style, start)]
    stylize(make(), content=content, styles=[style], init=start)
    for before, after in zip(copies, (content, style, start), strict=True):
        assert torch.equal(before, after)


def test_coarse_to_fine_runs_each_scale(make) -> None:
    stylizer = make(scales=(0.25, 0.5, 1.0), min_scale_side=16, coarse_iterations=3,
                    iterations=4)
    seen = []
    result = stylize(stylizer, content=image(0, 64, 64), progress=seen.append)
    assert [p.scale_index for p in seen] == [0] * 3 + [1] * 3 + [2] * 4
    assert [p.size for p in seen][::3][:3] == [(16, 16), (32, 32), (64, 64)]
    assert all(p.scale_count == 3 and p.total == 10 for p in seen)
    assert [p.iteration for p in seen] == list(range(1, 11))
    assert result.iterations == 10 and result.image.shape[-2:] == (64, 64)
    assert "total" in seen[-1].losses and seen[-1].loss == seen[-1].losses["total"]


def test_small_scales_skipped_and_coarse_to_fine_off(make) -> None:
    stylizer = make(scales=(0.25, 0.5, 1.0), min_scale_side=32, coarse_iterations=2,
                    iterations=2)
    seen = []
    stylize(stylizer, content=image(0, 64, 64), progress=seen.append)
    assert sorted({p.size for p in seen}) == [(32, 32), (64, 64)]  # 16 px scale skipped
    seen.clear()
    stylize(stylizer, content=image(0, 64, 64), progress=seen.append, coarse_to_fine=False)
    assert {p.size for p in seen} == {(64, 64)}


def test_preserve_color_keeps_content_chroma(make) -> None:
    content = image(0, low=0.1, high=0.9)
    result = stylize(make(preserve_color=True, iterations=15), content=content,
                     styles=[image(5, 40, 40)], init=image(9))
    ours, theirs = rgb_to_yiq(result.image), rgb_to_yiq(content)
    torch.testing.assert_close(ours[:, 1:], theirs[:, 1:], atol=1e-5, rtol=0)
    assert not torch.allclose(ours[:, :1], theirs[:, :1], atol=1e-3)  # luminance did change
    assert result.final_loss < result.initial_loss


def test_blend_weights(make) -> None:
    stylizer = make(iterations=10)
    a, b = image(1, 40, 40), image(2, 24, 40)
    single = stylize(stylizer, styles=[a]).image
    assert torch.equal(stylize(stylizer, styles=[a, b], blend=[1.0, 0.0]).image, single)
    assert torch.equal(stylize(stylizer, styles=[a, b], blend=[3.0, 0.0]).image, single)
    mixed = stylize(stylizer, styles=[a, b], blend=[0.5, 0.5]).image
    assert not torch.allclose(mixed, single, atol=1e-4)
    target = stylizer.prepare_style([a, b], [3.0, 1.0])
    assert target.blend == (0.75, 0.25)


@pytest.mark.parametrize("images, blend", [([], []), ([1], [1.0, 2.0]), ([1, 2], [1.0, -1.0]),
                                           ([1, 2], [0.0, 0.0])])
def test_bad_blend_is_usage_error(make, images, blend) -> None:
    with pytest.raises(UsageError):
        make().prepare_style([image(i) for i in images], blend)


def test_style_grams_cached_per_size(make) -> None:
    stylizer = make(iterations=2)
    target = stylizer.prepare_style([image(1, 40, 40)], [1.0])
    stylizer.run(image(0), target)
    stylizer.run(image(3), target)  # another frame of the same size: Grams reused
    assert len(target._cache) == 1
    stylizer.run(image(0, 24, 24), target)
    assert len(target._cache) == 2
    other = make()
    with pytest.raises(ValueError, match="another Stylizer"):
        other.run(image(0), target)


def test_style_scale_sizes_the_style_image(make) -> None:
    stylizer = make(style_scale=0.5)
    prepared = stylizer._prepare_style_image(image(1, 40, 80), 48, None)
    assert prepared.shape[-2:] == (24, 48)
    tiny = stylizer._prepare_style_image(image(1, 40, 80), 8, None)
    assert min(tiny.shape[-2:]) >= stylizer.features.min_side


def test_early_stopping(make) -> None:
    result = stylize(make(iterations=200, tolerance=0.5, tolerance_window=3))
    assert result.stopped_early and result.iterations < 200
    assert not stylize(make(iterations=10, tolerance=0.0)).stopped_early


def test_should_stop_raises_interrupted(make) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Interrupted):
        stylize(make(iterations=50), should_stop=stop)
    assert len(calls) == 4


def test_temporal_term_pulls_towards_target(make) -> None:
    stylizer = make(iterations=15)
    goal = image(11)
    mask = torch.ones(1, 1, 32, 48)
    free = stylize(stylizer)
    held = stylize(stylizer, temporal=[TemporalTerm(goal, mask, 1e4)])
    assert "temporal" in held.losses
    assert (held.image - goal).abs().mean() < (free.image - goal).abs().mean()


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"channels_last": True},
                                     {"pooling": "avg"}, {"sync_every": 4}])
def test_variants_run(make, options) -> None:
    seen = []
    result = stylize(make(iterations=6, **options), progress=seen.append)
    assert result.final_loss < result.initial_loss
    assert len(seen) == 6


def test_too_small_image(make) -> None:
    with pytest.raises(UsageError, match="at least 16 pixels"):
        stylize(make(), content=image(0, 8, 32))


def test_a_start_whose_loss_is_not_finite_is_reported(make) -> None:
    """Later non-finite trials are rejected by the line search; a start that is not finite
    leaves nothing to return, and the error says so."""
    content = image(0)
    content[..., 3, 5] = float("nan")
    with pytest.raises(NstdError, match="not finite"):
        stylize(make(), content=content)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_build_stylizer_from_config(vgg_weights_path) -> None:
    config = parse_config({"model": {"weights": str(vgg_weights_path), "device": "cpu",
                                     "precision": "bf16", "pooling": "avg"}})
    stylizer = build_stylizer(config.model, config.style)
    assert stylizer.device == CPU and stylizer.precision == "fp32"  # bf16 is CUDA-only
    assert not stylizer.channels_last and stylizer.features.pooling == "avg"
    assert stylizer.features.deepest == "relu5_1"

"""A video keeps its quality: the temporal constraint is the same at any loss scale, warm
frames stop at the shot's quality, long clips do not drift, and every frame's figures are
reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from nstd.config import Config, parse_config
from nstd.engine.optim import BoxLBFGS
from nstd.engine.stylizer import Bounds, build_stylizer
from nstd.errors import ConfigError
from nstd.job import JobRequest
from nstd.media import container as video
from nstd.pipeline import run_job
from nstd.temporal.bounds import landing_range, prior_bounds
from nstd.testing.clips import recurring_order, write_recurring_clip, write_scene_clip
from nstd.testing.media import write_test_image


def config_for(weights: Path, side: int = 48, **video_keys: object) -> Config:
    return parse_config({
        "model": {"weights": str(weights), "device": "cpu"},
        "style": {"max_side": side, "iterations": 30, "scales": [1.0], "min_scale_side": 16},
        "video": {"crf": 0, "preset": "ultrafast", **video_keys},
    })


def stylize(source: Path, out: Path, style: Path, config: Config):
    request = JobRequest(source=source, output=out, styles=(style,), blend=(1.0,),
                         config=config, work_dir=out.with_suffix(".work"))
    return run_job(request, build_stylizer(config.model, config.style))


def decoded(path: Path) -> list[np.ndarray]:
    info = video.probe_video(path, parse_config({}).limits)
    return [f.rgb.astype(np.float32) for f in video.iter_frames(path, info)]


@pytest.fixture()
def style_image(tmp_path: Path) -> Path:
    return write_test_image(tmp_path / "style.png", size=(40, 40), seed=3)


# --------------------------------------------------------------------------- the constraint


def test_a_static_pixel_may_move_only_by_the_tolerance():
    previous = np.random.default_rng(0).random((6, 8, 3)).astype(np.float32)
    still = np.zeros((6, 8, 2), np.float32)
    mask = np.ones((6, 8), np.float32)
    mask[0, 0] = 0.0  # one unreliable pixel: free
    lo, hi = prior_bounds(previous, previous, still, mask, tolerance=2.0)
    inside = (slice(1, None), slice(None))
    assert np.allclose(lo[inside], np.clip(previous[inside] - 2 / 255, 0, 1), atol=1e-6)
    assert np.allclose(hi[inside], np.clip(previous[inside] + 2 / 255, 0, 1), atol=1e-6)
    assert (lo[0, 0] == 0).all() and (hi[0, 0] == 1).all()


def test_a_half_pixel_shift_allows_the_range_of_both_neighbours_not_only_their_blur():
    row = np.array([0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
    image = np.repeat(np.repeat(row[None, :, None], 3, axis=0), 3, axis=2)
    half = np.zeros((3, 5, 2), np.float32)
    half[..., 0] = 0.5
    low, high = landing_range(image, half)
    assert (low[:, :4] == 0).all() and (high[:, :4] == 1).all()  # both neighbours
    tiny = np.zeros((3, 5, 2), np.float32)
    tiny[..., 0] = 0.05  # flow noise on a static scene: the pixel's own value only
    low, high = landing_range(image, tiny)
    assert np.array_equal(low, image) and np.array_equal(high, image)


def test_box_lbfgs_keeps_every_element_inside_its_own_bounds():
    target = torch.linspace(-1, 2, 12)
    x = torch.zeros(12, requires_grad=True)
    lo = torch.linspace(0.0, 0.5, 12)
    hi = lo + 0.1
    opt = BoxLBFGS(x, lo=lo, hi=hi)
    for _ in range(30):
        def closure():
            opt.zero_grad()
            loss = ((x - target) ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        assert ((x >= lo - 1e-7) & (x <= hi + 1e-7)).all()
    expected = target.clamp(lo, hi)
    assert torch.allclose(x.detach(), expected, atol=1e-4)


def test_the_engine_returns_an_image_inside_the_bounds(vgg_weights_path: Path):
    config = config_for(vgg_weights_path)
    stylizer = build_stylizer(config.model, config.style)
    content = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = stylizer.prepare_style([torch.rand(1, 3, 32, 32)], [1.0])
    lo, hi = (content - 0.02).clamp(0, 1), (content + 0.02).clamp(0, 1)
    result = stylizer.run(content, target, init=content, iterations=10, coarse_to_fine=False,
                          bounds=Bounds(lo, hi))
    assert (result.image >= lo - 1e-6).all() and (result.image <= hi + 1e-6).all()
    assert result.final_loss < result.initial_loss


def test_the_retired_temporal_weight_names_its_replacement():
    with pytest.raises(ConfigError, match="video.temporal_weight: replaced by "
                                          "video.temporal_tolerance"):
        parse_config({"video": {"temporal_weight": 50}})
    with pytest.raises(ConfigError, match="video.long_term: no longer needed"):
        parse_config({"video": {"long_term": True}})


# --------------------------------------------------------------------------- scale


def test_the_video_is_the_same_at_any_loss_scale(tmp_path: Path, style_image: Path,
                                                 vgg_weights_path: Path):
    """alpha, beta and gamma x10 and x0.1: the same frames within rounding, the loss x10 and
    x0.1 (the temporal constraint is in grey levels, the optimizer scale-free)."""
    clip = write_scene_clip(tmp_path / "pan.mp4", "pan", frames=6, size=(48, 36))
    base = config_for(vgg_weights_path, frame_iterations=6)
    outputs, losses = {}, {}
    for factor in (1.0, 10.0, 0.1):
        style = dataclasses.replace(base.style,
                                    content_weight=base.style.content_weight * factor,
                                    style_weight=base.style.style_weight * factor,
                                    tv_weight=base.style.tv_weight * factor)
        config = dataclasses.replace(base, style=style)
        out = tmp_path / f"x{factor}.mp4"
        report = stylize(clip, out, style_image, config)
        outputs[factor] = decoded(out)
        losses[factor] = report.extra["mean_frame_loss"] / factor
    for factor in (10.0, 0.1):
        assert losses[factor] == pytest.approx(losses[1.0], rel=0.01)
        worst = max(float(np.abs(a - b).max()) for a, b in zip(outputs[1.0], outputs[factor],
                                                                 strict=True))
        assert worst <= 1.0, f"x{factor}: frames differ by up to {worst} grey levels"


# --------------------------------------------------------------------------- quality target


def test_an_easy_frame_stops_early_and_a_hard_one_gets_more(tmp_path: Path, style_image: Path,
                                                            vgg_weights_path: Path):
    """A static shot is easy (the previous frame already has the shot's quality); the frames
    where a new object sweeps across are hard."""
    static = write_scene_clip(tmp_path / "static.mp4", "static", frames=5, size=(48, 36))
    fast = write_scene_clip(tmp_path / "fast.mp4", "fast", frames=5, size=(48, 36))
    config = config_for(vgg_weights_path, frame_iterations=30)
    easy = stylize(static, tmp_path / "s.mp4", style_image, config).extra["per_frame"]
    hard = stylize(fast, tmp_path / "f.mp4", style_image, config).extra["per_frame"]
    easy_warm = [f["iterations"] for f in easy if not f["cold"]]
    hard_warm = [f["iterations"] for f in hard if not f["cold"]]
    assert max(easy_warm) < 30  # stopped at the target, before the cap
    assert np.mean(hard_warm) > np.mean(easy_warm)
    # A frame stopped at the target is at the shot's quality: within the target's ratio.
    for frame in easy:
        if not frame["cold"] and frame["iterations"] < 30:
            assert frame["quality"] <= config.video.frame_target + 1e-6


def test_frame_target_zero_runs_every_warm_frame_to_its_budget(tmp_path: Path,
                                                               style_image: Path,
                                                               vgg_weights_path: Path):
    static = write_scene_clip(tmp_path / "static.mp4", "static", frames=4, size=(48, 36))
    config = config_for(vgg_weights_path, frame_iterations=5, frame_target=0.0,
                        frame_tolerance=0.0)
    frames = stylize(static, tmp_path / "s.mp4", style_image, config).extra["per_frame"]
    assert [f["iterations"] for f in frames if not f["cold"]] == [5, 5, 5]


# --------------------------------------------------------------------------- long clips


def test_a_long_recurring_clip_shows_no_upward_trend_in_frame_loss(tmp_path: Path,
                                                                   style_image: Path,
                                                                   vgg_weights_path: Path):
    """200 frames of a pan played back and forth at 32 px: the last fifth's mean frame loss
    is no higher than 1.1x the first fifth's (the former temporal loss climbed steadily)."""
    clip = write_recurring_clip(tmp_path / "rec.mp4", frames=200, size=(48, 36), period=40)
    config = config_for(vgg_weights_path, side=32, frame_iterations=10)
    frames = stylize(clip, tmp_path / "out.mp4", style_image, config).extra["per_frame"]
    losses = [f["loss"] for f in frames]
    assert len(losses) == 200 and sum(f["cold"] for f in frames) == 1
    assert np.mean(losses[-40:]) <= 1.1 * np.mean(losses[:40]), (np.mean(losses[:40]),
                                                                 np.mean(losses[-40:]))
    assert recurring_order(200, 40)[76:80] == [2, 1, 0, 1]


# --------------------------------------------------------------------------- figures


def test_json_lists_every_frame_and_agrees_with_the_summary(tmp_path: Path, style_image: Path,
                                                            vgg_weights_path: Path):
    clip = write_scene_clip(tmp_path / "cuts.mp4", "cuts", frames=8, size=(48, 36))
    report = stylize(clip, tmp_path / "out.mp4", style_image,
                     config_for(vgg_weights_path, frame_iterations=4))
    data = report.as_dict()
    frames = data["per_frame"]
    assert [f["frame"] for f in frames] == list(range(8))
    for f in frames:
        assert set(f) >= {"frame", "loss", "iterations", "cold", "quality"}
    assert sum(f["iterations"] for f in frames) == data["iterations"]
    assert np.mean([f["loss"] for f in frames]) == pytest.approx(data["mean_frame_loss"])
    assert sum(f["cold"] for f in frames) == data["cold_frames"] >= 2  # the cuts start cold
    assert all(f["quality"] == pytest.approx(1.0) for f in frames if f["cold"])
    assert data["worst_frame_quality"] == max(f["quality"] for f in frames)


def test_the_box_follows_a_fade_of_the_input():
    """A fade darkens every input pixel by a fraction per frame: the start moves with the
    input's change and the box widens by it, or the output would stay bright within its 2
    grey levels."""
    from nstd.temporal.bounds import input_change

    rng = np.random.default_rng(2)
    previous_input = (rng.random((16, 16, 3)) * 100 + 120).astype(np.uint8)
    current_input = (previous_input * 0.8).astype(np.uint8)
    still = np.zeros((16, 16, 2), np.float32)
    change = input_change(previous_input, current_input, still)
    assert -0.16 < float(change.mean()) < -0.11  # 20 % of ~170 grey levels
    stylized = rng.random((16, 16, 3)).astype(np.float32) * 0.3 + 0.5
    start = np.clip(stylized + change, 0, 1)
    lo, hi = prior_bounds(stylized, start, still, np.ones((16, 16), np.float32), 2.0, change)
    assert (lo < stylized - 0.1).all()  # room to follow the fade
    assert ((lo <= start) & (start <= hi)).all()
    unchanged = input_change(previous_input, previous_input, still)
    lo, hi = prior_bounds(stylized, stylized, still, np.ones((16, 16), np.float32), 2.0,
                          unchanged)
    assert np.allclose(hi - lo, 4 / 255, atol=1e-6)  # no change: the plain box

"""Flow, warp, consistency masks, scene cuts and segment planning on synthetic frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nstd.temporal.flow import (
    DEFAULT_SCENE_CUT_THRESHOLD,
    FlowEstimator,
    Prior,
    consistency_mask,
    estimate_motion,
    is_scene_cut,
    scene_cut_score,
    warp,
    warp_prior,
)
from nstd.temporal.plan import cold_frames, plan_units

H, W = 96, 128
M = 12  # interior margin: flow near the borders is extrapolated, not measured


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture, uint8 (h, w, 3): blurred noise at three scales."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for sigma, amp in ((2.0, 1.0), (6.0, 1.5), (16.0, 2.0)):
        n = cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), sigma)
        out += amp * n / n.std()
    out = (out - out.min()) / (out.max() - out.min())
    return (out * 255).round().astype(np.uint8)


def shifted_pair(dx: float, dy: float, seed: int = 0, h: int = H, w: int = W):
    """(frame0, frame1): frame1 shows frame0's content moved by (+dx, +dy) pixels.

    Both are crops of one bigger texture; sub-pixel shifts by bilinear resampling.
    """
    pad = 24
    big = texture(h + 2 * pad, w + 2 * pad, seed)
    f0 = big[pad : pad + h, pad : pad + w].copy()
    mat = np.float32([[1, 0, pad - dx], [0, 1, pad - dy]])  # dst(x) = big(x + pad - d)
    f1 = cv2.warpAffine(big, mat, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return f0, f1


def inner(a: np.ndarray) -> np.ndarray:
    return a[M:-M, M:-M]


# ------------------------------------------------------------------------------ flow


@pytest.mark.parametrize("dx,dy", [(3, -2), (1.5, 0.5), (-6, 4)])
def test_flow_recovers_translation_in_the_interior(dx: float, dy: float) -> None:
    f0, f1 = shifted_pair(dx, dy)
    flow = FlowEstimator()(f0, f1)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    err = np.abs(inner(flow) - np.float32([dx, dy]))
    assert err.mean() < 0.15
    assert np.percentile(err, 99) < 0.5


def test_flow_estimator_is_reusable_and_downscaled_flow_is_rescaled() -> None:
    est = FlowEstimator()
    for seed in range(2):  # the same DIS object, several pairs
        f0, f1 = shifted_pair(4, 2, seed=seed)
        assert np.abs(inner(est(f0, f1)) - [4, 2]).mean() < 0.15
    f0, f1 = shifted_pair(4, 2, h=192, w=256)
    flow = FlowEstimator(max_side=128)(f0, f1)
    assert flow.shape == (192, 256, 2)
    assert np.abs(flow[24:-24, 24:-24] - [4, 2]).mean() < 0.5


def test_flow_rejects_bad_frames() -> None:
    f0, f1 = shifted_pair(1, 1)
    with pytest.raises(ValueError, match="size"):
        FlowEstimator()(f0, f1[:-2])
    with pytest.raises(ValueError, match="uint8"):
        FlowEstimator()(f0.astype(np.float32), f1.astype(np.float32))
    with pytest.raises(ValueError, match="preset"):
        FlowEstimator("slowest")


# ------------------------------------------------------------------------------ warp


def test_warp_follows_the_pull_convention_exactly() -> None:
    img = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)
    flow = np.zeros((5, 6, 2), np.float32)
    flow[..., 0] = 2.0  # out(x) = img(x + 2)
    out = warp(img, flow)
    np.testing.assert_allclose(out[:, :4], img[:, 2:])
    np.testing.assert_allclose(out[:, 4:], img[:, 5:6].repeat(2, axis=1))  # border replicated
    half = warp(img, np.full((5, 6, 2), [0.5, 0.0], np.float32))
    np.testing.assert_allclose(half[:, :5], (img[:, :5] + img[:, 1:]) / 2, atol=0.1)
    assert img[0, 0, 0] == 0.0  # input untouched


def test_warp_handles_grey_and_many_channels() -> None:
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 1] = 1.0
    grey = np.arange(20, dtype=np.float32).reshape(4, 5)
    assert warp(grey, flow).shape == (4, 5)
    np.testing.assert_allclose(warp(grey, flow)[:3], grey[1:])
    stack = np.random.default_rng(0).random((4, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(warp(stack, flow)[:3], stack[1:], atol=1e-6)
    with pytest.raises(ValueError):
        warp(grey, flow[:3])


def test_warp_along_estimated_flow_reconstructs_the_other_frame() -> None:
    prev, cur = shifted_pair(3, -2)  # frame t-1, frame t
    flow_bw = FlowEstimator()(cur, prev)  # t -> t-1
    flow_fw = FlowEstimator()(prev, cur)  # t-1 -> t
    prev_f, cur_f = prev.astype(np.float32) / 255, cur.astype(np.float32) / 255
    baseline = np.abs(inner(prev_f) - inner(cur_f)).mean()
    # The pipeline's direction: previous frame carried onto frame t with flow t -> t-1.
    assert np.abs(inner(warp(prev_f, flow_bw)) - inner(cur_f)).mean() < 0.1 * baseline
    # And the reverse: frame t pulled back onto frame t-1 with flow t-1 -> t.
    assert np.abs(inner(warp(cur_f, flow_fw)) - inner(prev_f)).mean() < 0.1 * baseline


# ------------------------------------------------------------------------------ masks


def test_mask_is_one_inside_and_zero_on_the_disoccluded_strip() -> None:
    prev, cur = shifted_pair(4, -3)  # content moves right and up: new pixels enter
    motion = estimate_motion(prev, cur)  # at the left and bottom of frame t
    mask = motion.mask
    assert mask.shape == (H, W) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert inner(mask).mean() > 0.99
    assert mask[:, :4].mean() < 0.05  # left strip: came from outside frame t-1
    assert mask[-3:, :].mean() < 0.05  # bottom strip


def test_mask_marks_inconsistent_flows_and_motion_boundaries() -> None:
    zero = np.zeros((20, 30, 2), np.float32)
    assert consistency_mask(zero, zero).min() == 1.0
    moving = np.zeros_like(zero)
    moving[..., 0] = 3.0
    # Backward says "came from 3 px right", forward says "did not move": occluded.
    assert inner_small(consistency_mask(moving, zero)).max() == 0.0
    # An object (columns 5..12 in frame t-1) moves 2 px right over a static background.
    flow_fw = np.zeros_like(zero)  # t-1 -> t
    flow_fw[:, 5:13, 0] = 2.0
    flow_bw = np.zeros_like(zero)  # t -> t-1: the object is at columns 7..14 in frame t
    flow_bw[:, 7:15, 0] = -2.0
    mask = consistency_mask(flow_bw, flow_fw)
    expected = np.ones(30, np.float32)
    expected[5:7] = 0  # background uncovered behind the object: disoccluded
    expected[6:8] = 0  # motion boundary at the object's left edge (central differences)
    expected[14:16] = 0  # ... and at its right edge
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, mask.shape))


def inner_small(a: np.ndarray) -> np.ndarray:
    return a[4:-4, 4:-4]


def test_warp_prior_carries_the_stylized_frame_along_the_motion() -> None:
    prev, cur = shifted_pair(2, 3)
    # A fake "stylization" that is a fixed function of the content, so the truth is known.
    style = lambda f: (1.0 - f.astype(np.float32) / 255) ** 2  # noqa: E731
    prior = warp_prior(style(prev), estimate_motion(prev, cur, FlowEstimator()))
    assert isinstance(prior, Prior)
    assert prior.warped.shape == (H, W, 3) and prior.warped.dtype == np.float32
    assert 0.0 <= prior.warped.min() and prior.warped.max() <= 1.0
    reliable = prior.mask > 0
    err = np.abs(prior.warped - style(cur))[reliable].mean()
    assert err < 0.1 * np.abs(style(prev) - style(cur)).mean()
    with pytest.raises(ValueError, match="output size"):
        warp_prior(style(prev)[::2, ::2], estimate_motion(prev, cur))


def flat(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((H, W, 3), rgb, np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_scene_cut_fires_between_two_textures(seed: int) -> None:
    a, b = texture(H, W, seed), texture(H, W, seed + 50)
    assert is_scene_cut(a, b)
    assert is_scene_cut(a, b, DEFAULT_SCENE_CUT_THRESHOLD)


def test_scene_cut_fires_between_two_colours_and_texture_to_flat() -> None:
    assert is_scene_cut(flat((200, 40, 30)), flat((30, 60, 190)))
    assert is_scene_cut(flat((60, 60, 60)), flat((160, 160, 160)))
    assert is_scene_cut(texture(H, W, 1), flat((128, 128, 128)))


@pytest.mark.parametrize("dx,dy", [(0, 0), (1, 0), (5, -3), (12, 6), (-16, 0)])
def test_scene_cut_ignores_motion_of_one_texture(dx: int, dy: int) -> None:
    a, b = shifted_pair(dx, dy, seed=3)  # up to 1/8 of the frame width per frame
    assert scene_cut_score(a, b) < 0.2
    assert not is_scene_cut(a, b)


def test_scene_cut_ignores_a_camera_pan_across_changing_colours() -> None:
    # A wide scene tinted from warm (left) to cool (right), panned 10 px per frame.
    n, step = 20, 10
    wide = texture(H, W + n * step, 7).astype(np.float32)
    ramp = np.linspace(0, 1, wide.shape[1], dtype=np.float32)[None, :, None]
    tint = (1 - ramp) * np.float32([1.2, 0.8, 0.6]) + ramp * np.float32([0.6, 0.8, 1.2])
    wide = np.clip(wide * tint, 0, 255).astype(np.uint8)
    frames = [wide[:, i * step : i * step + W] for i in range(n)]
    scores = [scene_cut_score(a, b) for a, b in zip(frames[:-1], frames[1:], strict=True)]
    assert max(scores) < 0.3
    # The whole pan's two ends are different scenes, though.
    assert is_scene_cut(frames[0], frames[-1])


def test_scene_cut_ignores_small_zoom_and_rotation_and_noise() -> None:
    a = texture(H, W, 4)
    zoom = cv2.resize(a, None, fx=1.08, fy=1.08)[4 : 4 + H, 5 : 5 + W]
    rot = cv2.warpAffine(a, cv2.getRotationMatrix2D((W / 2, H / 2), 4, 1), (W, H),
                         borderMode=cv2.BORDER_REFLECT)
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 4, a.shape), 0, 255).astype(np.uint8)
    for b in (zoom, rot, noisy):
        assert not is_scene_cut(a, b)


def test_scene_cut_on_tiny_and_large_frames() -> None:
    assert is_scene_cut(texture(17, 23, 1), texture(17, 23, 2))
    a, b = shifted_pair(24, 8, seed=5, h=360, w=480)
    assert not is_scene_cut(a, b)
    with pytest.raises(ValueError):
        scene_cut_score(a, b[:100])


# ------------------------------------------------------------------------------ segments


def test_a_local_run_is_the_unit_cut_without_splits() -> None:
    plan = {"frames": 25, "cuts": [10, 4]}
    shots = sorted(plan_units(plan, 0, 0), key=lambda u: u.start)
    assert [(u.first, u.start, u.stop) for u in shots] == [(0, 0, 4), (4, 4, 10), (10, 10, 25)]
    assert cold_frames(plan) == {0, 4, 10}
    # The same plan cut for several workers keeps those shots' cold starts and adds the
    # warm-up starts of the split pieces.
    units = plan_units(plan, 6, 2)
    assert sum(u.stop - u.start for u in units) == 25
    assert cold_frames(plan) <= {u.first for u in units}


def test_cold_frames_edge_cases() -> None:
    assert cold_frames({"frames": 0, "cuts": []}) == set()
    assert cold_frames({"frames": 5, "cuts": []}) == {0}
    assert cold_frames({"frames": 5, "cuts": [0, 0, 3, 3]}) == {0, 3}

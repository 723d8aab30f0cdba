"""E_warp (Lai et al. 2018) on synthetic frame sequences and tiny encoded clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nstd.errors import InputError
from nstd.temporal.ewarp import (
    WarpingErrorMeter,
    evaluate_videos,
    farneback_flow,
    lai_mask,
    warping_error,
)

H, W = 48, 64


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture, uint8 (h, w, 3): blurred noise at three scales."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for sigma, amp in ((2.0, 1.0), (6.0, 1.5), (16.0, 2.0)):
        n = cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), sigma)
        out += amp * n / n.std()
    out = (out - out.min()) / (out.max() - out.min())
    return (out * 255).round().astype(np.uint8)


def moving(n: int, dx: int = 2, dy: int = 1, seed: int = 0) -> list[np.ndarray]:
    """n frames of one texture whose content moves by (+dx, +dy) px per frame."""
    pad = 8
    big = texture(H + 2 * pad + abs(dy) * n, W + 2 * pad + abs(dx) * n, seed)
    x0, y0 = pad + abs(dx) * n, pad + abs(dy) * n
    return [big[y0 - dy * t : y0 - dy * t + H, x0 - dx * t : x0 - dx * t + W].copy()
            for t in range(n)]


def add_noise(frames: list[np.ndarray], sigma: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(f + rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8) for f in frames]


def test_static_clip_has_zero_error() -> None:
    frames = [texture(H, W, 1)] * 6
    assert warping_error(frames, frames) < 1e-6
    assert warping_error(iter(frames), (f for f in frames)) < 1e-6  # streams


def test_translating_source_is_consistent_with_itself() -> None:
    frames = moving(8)
    assert warping_error(frames, frames) < 1e-4


def test_shuffled_frames_give_a_large_error() -> None:
    frames = moving(8)
    order = [3, 0, 6, 1, 7, 2, 5, 4]
    shuffled = [frames[i] for i in order]
    assert warping_error(frames, shuffled) > 100 * warping_error(frames, frames)
    unrelated = [texture(H, W, s) for s in range(8)]  # a "clip" of unrelated frames
    assert warping_error(unrelated, unrelated) > 0.01


def test_flicker_ranks_above_the_source_floor() -> None:
    frames = moving(8)
    floor = warping_error(frames, frames)
    flicker = warping_error(frames, add_noise(frames, 12))
    assert flicker > 50 * floor
    # Lower flicker, lower error: the metric orders outputs.
    assert warping_error(frames, add_noise(frames, 4)) < flicker


def test_output_at_another_size_is_compared_at_its_own_size() -> None:
    frames = moving(6)
    half = [cv2.resize(f, (W // 2, H // 2), interpolation=cv2.INTER_AREA) for f in frames]
    assert warping_error(frames, half) < 1e-3
    meter = WarpingErrorMeter()
    for f, h in zip(frames, half, strict=True):
        meter.add(f, h)
    assert meter.size == (W // 2, H // 2) and meter.pairs == 5 and meter.frames == 6


def test_mismatched_or_too_short_sequences_are_refused() -> None:
    frames = moving(4)
    with pytest.raises(InputError, match="frame by frame"):
        warping_error(frames, frames[:3])
    with pytest.raises(InputError, match="frame by frame"):
        warping_error(frames[:3], frames)
    with pytest.raises(InputError, match="at least 2 frames"):
        warping_error(frames[:1], frames[:1])


def test_lai_mask_for_pure_translation() -> None:
    f0, f1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in moving(2, dx=3, dy=0))
    fw, bw = farneback_flow(f0, f1), farneback_flow(f1, f0)
    assert np.abs(fw[8:-8, 8:-8] - [3, 0]).mean() < 0.2
    mask = lai_mask(fw, bw)
    assert mask.dtype == np.float32 and mask.shape == (H, W)
    assert mask[8:-8, 8:-8].mean() > 0.99
    assert mask[:, -3:].mean() < 0.05  # frame t's right strip leaves the frame at t+1


# ------------------------------------------------------------------------------ files


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    """Lossless FFV1 in Matroska: exact pixels, so the figures match the numpy ones."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "bgr0"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_evaluate_videos_reports_both_figures(tmp_path: Path) -> None:
    frames = moving(6)
    source = write_clip(tmp_path / "source.mkv", frames)
    flicker = write_clip(tmp_path / "flicker.mkv", add_noise(frames, 12))
    figures = evaluate_videos(source, flicker)
    assert set(figures) >= {"ewarp", "source_ewarp", "pairs", "frames"}
    assert figures["frames"] == 6 and figures["pairs"] == 5
    assert (figures["width"], figures["height"]) == (W, H)
    assert figures["ewarp"] > 50 * figures["source_ewarp"]
    assert figures["source_ewarp"] == pytest.approx(warping_error(frames, frames), abs=1e-7)
    same = evaluate_videos(source, source)
    assert same["ewarp"] == pytest.approx(same["source_ewarp"])


def test_evaluate_videos_refuses_bad_inputs(tmp_path: Path) -> None:
    frames = moving(5)
    source = write_clip(tmp_path / "source.mkv", frames)
    short = write_clip(tmp_path / "short.mkv", frames[:3])
    with pytest.raises(InputError, match="short.mkv has 3 frames"):
        evaluate_videos(source, short)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="junk.mp4"):
        evaluate_videos(junk, source)


def test_pairs_across_a_known_cut_are_left_out(tmp_path: Path) -> None:
    # Two shots of different texture: across the cut there is nothing to be consistent with.
    frames = moving(4, seed=1) + moving(4, seed=2)
    source = write_clip(tmp_path / "source.mkv", frames)
    flicker = write_clip(tmp_path / "flicker.mkv", add_noise(frames, 12))
    everything = evaluate_videos(source, flicker)
    within = evaluate_videos(source, flicker, new_shots={4})
    assert (everything["pairs"], within["pairs"], within["pairs_across_cuts"]) == (7, 6, 1)
    assert within["source_ewarp"] < everything["source_ewarp"]

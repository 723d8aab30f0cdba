"""Clips with the motion of real footage, made by code: the video panel of bench/modes.py and
the long clips of bench/drift.py.

A uniform texture pan is the easiest case for a video stylizer: every pixel moves alike and
nothing is occluded. Real footage has layers that move differently (parallax), things that
cover and uncover the background, zooms and rotations, shaky hand-held cameras, fades and
cuts, and sensor noise on static shots. Each clip here is a camera moving over a photo-like
world (`nstd.testing.panel`'s scene generators at 3x the frame size) with a textured object
moving on its own path in front of it, plus Gaussian noise of 1.5 grey levels, encoded with
H.264 at crf 12 like a camera file.

    write_scene_clip(path, "pan", frames=48, size=(96, 72))
    write_recurring_clip(path, frames=1000, size=(64, 48))   # a pan played back and forth

Motions: static (fixed camera; a small object drifts), pan (0.6 px/frame with a vertical bob;
the object crosses the other way), zoom (0.4 %/frame in, with a slow rotation), fast
(a hand-held camera's jitter; the object crosses the frame in ~12 frames), fade (a fade to
black and back, then a dissolve into another scene), cuts (a hard cut every quarter of the clip
to another scene).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from nstd.testing.panel import GENERATORS

MOTIONS = ("static", "pan", "zoom", "fast", "fade", "cuts")
_WORLDS = ("landscape", "city", "still_life", "portrait")
NOISE_GREY_LEVELS = 1.5


def _world(name: str, size: tuple[int, int], seed: int) -> np.ndarray:
    """A scene 3x the frame size: float32 (3h, 3w, 3) in [0, 1]. The generator's shapes
    carry a multi-scale texture (real surfaces are rarely flat at the pixel scale)."""
    w, h = size
    rng = np.random.default_rng(seed)
    scene = GENERATORS[name](rng, 3 * h, 3 * w).astype(np.float32)
    detail = GENERATORS["stain"](rng, 3 * h, 3 * w).astype(np.float32).mean(axis=2)
    detail = (detail - detail.mean()) / (detail.std() + 1e-6)
    return np.clip(scene * (1.0 + 0.18 * detail[..., None]), 0.0, 1.0)


def _sprite(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured ellipse a third of the frame high: (rgb float32 (s, s, 3), alpha (s, s))."""
    w, h = size
    side = max(8, h // 3)
    rng = np.random.default_rng(seed + 99)
    rgb = GENERATORS["stain"](rng, side, side).astype(np.float32)
    rgb = np.clip(rgb[..., ::-1] * 1.2, 0.0, 1.0)  # bluish, unlike the worlds
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    r = (side - 1) / 2.0
    inside = ((xx - r) / r) ** 2 + ((yy - r) / (0.75 * r)) ** 2
    alpha = np.clip((1.0 - inside) * 4.0, 0.0, 1.0)
    return rgb, alpha


def _camera(world: np.ndarray, size: tuple[int, int], cx: float, cy: float, zoom: float = 1.0,
            angle: float = 0.0) -> np.ndarray:
    """The frame a camera centred at (cx, cy) world pixels sees: float32 (h, w, 3)."""
    w, h = size
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
    matrix[0, 2] += w / 2.0 - cx
    matrix[1, 2] += h / 2.0 - cy
    return cv2.warpAffine(world, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _paste(frame: np.ndarray, sprite: tuple[np.ndarray, np.ndarray], x: float, y: float
           ) -> np.ndarray:
    """The sprite composited with its centre at (x, y) (sub-pixel, by an affine shift)."""
    rgb, alpha = sprite
    h, w = frame.shape[:2]
    side = rgb.shape[0]
    shift = np.float32([[1, 0, x - (side - 1) / 2.0], [0, 1, y - (side - 1) / 2.0]])
    layer = cv2.warpAffine(rgb, shift, (w, h), flags=cv2.INTER_LINEAR)
    a = cv2.warpAffine(alpha, shift, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    return frame * (1.0 - a) + layer * a


def scene_frames(motion: str, frames: int, size: tuple[int, int], seed: int = 0
                 ) -> Iterator[np.ndarray]:
    """The frames of a panel clip, as displayed: uint8 (h, w, 3) RGB each."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r} (one of {', '.join(MOTIONS)})")
    w, h = size
    # Each motion looks at a different scene first (the cuts clip visits all four).
    first = {"static": 3, "pan": 0, "zoom": 1, "fast": 2, "fade": 0, "cuts": 0}[motion]
    names = _WORLDS[first:] + _WORLDS[:first]
    worlds = [_world(name, size, seed + i) for i, name in enumerate(names)]
    sprite = _sprite(size, seed)
    rng = np.random.default_rng(seed + 7)
    jitter = np.cumsum(rng.normal(0.0, 1.2, (frames, 2)), axis=0) * 0.35
    home = (1.5 * w, 1.5 * h)
    for t in range(frames):
        world, cx, cy, zoom, angle = worlds[0], home[0], home[1], 1.0, 0.0
        sx, sy = 0.3 * w + 0.15 * t, 0.6 * h  # static: a small slow object
        if motion == "pan" or motion == "fade":
            cx, cy = home[0] - 0.4 * w + 0.6 * t, home[1] + 0.08 * h * np.sin(t / 9.0)
            sx, sy = 0.9 * w - 1.3 * t % (1.4 * w), 0.55 * h + 0.1 * h * np.sin(t / 5.0)
        elif motion == "zoom":
            zoom, angle = 1.004 ** t, 0.1 * t
            sx, sy = 0.2 * w + 0.5 * t % w, 0.4 * h
        elif motion == "fast":
            cx, cy = home[0] + jitter[t, 0], home[1] + jitter[t, 1]
            period = 12
            phase = (t % (2 * period)) / period
            sx = (phase if phase <= 1 else 2 - phase) * 1.2 * w - 0.1 * w
            sy = 0.5 * h + 0.2 * h * np.sin(t / 3.0)
        elif motion == "cuts":
            world = worlds[min(3, (4 * t) // max(1, frames))]
            cx = home[0] - 0.3 * w + 0.5 * t % (0.6 * w)
        frame = _paste(_camera(world, size, cx, cy, zoom, angle), sprite, sx, sy)
        if motion == "fade":
            frame = _fade(frame, t, frames, worlds[1], size, (cx, cy))
        noisy = frame * 255.0 + rng.normal(0.0, NOISE_GREY_LEVELS, frame.shape)
        yield np.clip(noisy, 0, 255).astype(np.uint8)


def hard_cuts(motion: str, frames: int) -> list[int]:
    """The frames of a panel clip that start a new shot (the cuts clip's scene changes; the
    fade's dissolve and the fade to black are not cuts)."""
    if motion != "cuts":
        return []
    return [t for t in range(1, frames)
            if min(3, (4 * t) // max(1, frames)) != min(3, (4 * (t - 1)) // max(1, frames))]


def _fade(frame: np.ndarray, t: int, frames: int, other: np.ndarray, size: tuple[int, int],
          centre: tuple[float, float]) -> np.ndarray:
    """Fade to black and back around a third of the clip; dissolve to `other` at two thirds."""
    third = frames // 3
    black = 1.0 - max(0.0, 1.0 - abs(t - third) / 8.0)  # 0 at the darkest frame
    frame = frame * (0.05 + 0.95 * black)
    mix = min(1.0, max(0.0, (t - 2 * third) / 12.0))
    if mix > 0:
        frame = (1 - mix) * frame + mix * _camera(other, size, *centre)
    return frame


def _write(path: Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: int) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_scene_clip(path: Path, motion: str, frames: int, size: tuple[int, int],
                     seed: int = 0, fps: int = 25) -> Path:
    """An H.264 MP4 of `scene_frames` (size (w, h), both even)."""
    return _write(Path(path), scene_frames(motion, frames, size, seed), size, fps)


def recurring_order(frames: int, period: int) -> list[int]:
    """Source frame index of each output frame of a clip played forward, backward, forward...
    over ``period`` source frames: 0, 1, ..., period-1, period-2, ..., 1, 0, 1, ..."""
    cycle = list(range(period)) + list(range(period - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(frames)]


def write_recurring_clip(path: Path, frames: int, size: tuple[int, int], period: int = 120,
                         motion: str = "pan", seed: int = 0, fps: int = 25) -> Path:
    """A long clip whose source frames recur: ``period`` frames of a `scene_frames` clip
    played forward and backward until ``frames`` frames (the same source frame returns every
    2 * (period - 1) frames, in one shot: no cut for the planner to find)."""
    source = list(scene_frames(motion, period, size, seed))
    return _write(Path(path), (source[i] for i in recurring_order(frames, period)), size, fps)

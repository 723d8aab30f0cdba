"""A synthetic clip of many shots (tests and bench/scaling.py): each shot its own texture,
moving, with a hard cut between shots, H.264 with a short GOP (so units seek)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from nstd.testing.media import smooth_texture


def shot_frames(shots: int, frames_per_shot: int, size: tuple[int, int],
                seed: int = 0) -> list[np.ndarray]:
    """(h, w, 3) uint8 frames: shot k shows texture k (inverted on odd shots: the cut is
    unmistakable) moving one pixel per frame."""
    width, height = size
    out = []
    for shot in range(shots):
        texture = smooth_texture(height + frames_per_shot + 8, width + frames_per_shot + 8,
                                 seed=seed + 17 * shot)
        if shot % 2:
            texture = 1.0 - texture
        for i in range(frames_per_shot):
            rgb = texture[i // 2:i // 2 + height, i:i + width]
            out.append((rgb * 215.0 + 20.5).astype(np.uint8))
    return out


def write_shots_clip(path: str | os.PathLike[str], *, shots: int, frames_per_shot: int,
                     size: tuple[int, int] = (48, 32), rate: Fraction = Fraction(25),
                     gop: int = 12, seed: int = 0) -> Path:
    """Write the clip of `shot_frames` as H.264 MP4 (keyframe every `gop` frames)."""
    path = Path(path)
    frames = shot_frames(shots, frames_per_shot, size, seed)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast", "g": str(gop),
                          "keyint_min": str(gop), "sc_threshold": "0"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path

"""A one-shot clip with uniform slow camera motion (seam tests and bench/seam_blends.py)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_pan_clip(path: Path, frames: int, size: tuple[int, int], dx: int = 1) -> Path:
    """H.264 (GOP 12, B-frames) of a texture moving ``dx`` px right per frame."""
    import av

    from nstd.testing.media import smooth_texture

    w, h = size
    texture = smooth_texture(h + 8, w + frames * dx + 8, seed=0)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast", "g": "12", "keyint_min": "12",
                          "sc_threshold": "0"}
        for i in range(frames):
            rgb = (texture[:h, i * dx:i * dx + w] * 215.0 + 20.5).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path

"""A cross-fade of two stylized textures that keeps their contrast (numpy + OpenCV, no torch).

The plain cross-fade of a seam (`nstd.temporal.seam.crossfade`) mixes two textures that are
independent at the fine scale (two optimizations from different starts): at weight w the mix's
fine detail has sqrt(w² + (1-w)²) of either one's amplitude (0.71 at w = 1/2), so mid-fade
frames look washed out and their style loss is far higher (bench/seam_blends.py, 48-frame
48x32 pan, two seams of 8 frames: +27 % mean frame loss with the slim net, +21 % full-width;
this blend: +0.4 % and +2.9 %, seam pairs at most 1.36x and 1.29x the median pair).

Here the frame is split into a local mean (Gaussian low-pass, ``sigma`` px: the shared picture,
where A and B agree) and the detail around it; the means are blended linearly, the details
linearly and then divided by (w² + (1-w)²)^(gamma/2) to restore their amplitude (the
histogram-preserving blend of Heitz & Neyret 2018 at gamma = 1). gamma = 1/2 restores half of
the lost amplitude (in decibels): at gamma = 1 the rescaled detail also amplifies the frame-to-
frame noise of both, and the seam's warp error rose (seam pairs' mean 1.31x the median pair
vs 1.17x at 1/2, same clip, slim net). Not enough at 96 px over 120 frames (slim net, 50
iterations): seam pairs up to 1.88x (mean 1.62x) the median pair
(bench/results/seam-blends-96px.json).
"""

from __future__ import annotations

import cv2
import numpy as np

DETAIL_SIGMA = 2.0  # px at the output size: the scale below which A and B are independent
DETAIL_GAMMA = 0.5  # how much of the detail amplitude a mix loses is given back (0: none)


def contrast_preserving_crossfade(a: np.ndarray, b: np.ndarray, position: int, length: int, *,
                                  sigma: float = DETAIL_SIGMA,
                                  gamma: float = DETAIL_GAMMA) -> np.ndarray:
    """Frame ``position`` (0-based) of an overlap of ``length`` frames: A's and B's blended.

    a, b: (H, W, 3) float32 in [0, 1] (A: the previous unit's own frame; B: the next unit's
    overlap frame of the same index). Returns (H, W, 3) float32 in [0, 1]. B's weight is
    ``(position + 1) / (length + 1)``, as in the plain cross-fade.
    """
    if not 0 <= position < length:
        raise ValueError(f"position {position} outside an overlap of {length} frames")
    wb = (position + 1) / (length + 1)
    wa = 1.0 - wb
    mean_a = cv2.GaussianBlur(a, (0, 0), sigma)
    mean_b = cv2.GaussianBlur(b, (0, 0), sigma)
    gain = (wa * wa + wb * wb) ** (-gamma / 2.0)
    out = wa * mean_a + wb * mean_b + gain * (wa * (a - mean_a) + wb * (b - mean_b))
    return np.clip(out, 0.0, 1.0).astype(np.float32)

"""How far a warm video frame may move from the previous stylized frame (numpy only).

The temporal constraint, and why it is a constraint rather than a loss term: Ruder et al.
(2016) add w * sum(mask * (x - warped)^2) to the Gatys loss. That weight is in absolute
units, so its balance with the other terms moves whenever content_weight, style_weight,
tv_weight, the style image or the network's activation scale change (the same video came
out ~20 % different in loss with every weight x10). And it competes with the style loss
every iteration: warm frames ended at 1.7x the loss of independent frames, and since each
frame is pulled towards the previous, already-compromised one, the loss climbed over long
clips. Here a warm frame instead minimizes the plain Gatys loss inside a per-pixel box:

    on reliable pixels (forward-backward consistent flow): lo <= x <= hi, where
        [lo, hi] = the range of the previous stylized frame over the pixels the flow lands
                   between, widened by `tolerance` grey levels on each side;
    elsewhere (disoccluded, motion boundaries, outside the frame): [0, 1].

The box is in image units (grey levels), so no loss weight and no change of the network's
scale can move it: the optimizer (`nstd.engine.optim.BoxLBFGS`) is scale-free, and so is
the whole video. It bounds the flicker directly: a reliable pixel differs from where the
motion says it came from by at most `tolerance` plus the sub-pixel range; and inside that
box nothing pulls against the style, so a warm frame reaches a cold frame's loss.

Why the range over the landing pixels rather than the interpolated value alone: a warp by a
sub-pixel shift interpolates, which is a blur (at a half-pixel shift a one-pixel texture is
flattened to its mean). A box around the blurred value would let the texture be re-sharpened
by only `tolerance` per frame, so over a slow pan it would fade, and the loss with it. Any
value between the neighbours the flow lands between is as consistent with the motion as
the interpolated one. A neighbour enters the range only when its bilinear weight is at
least `MIN_NEIGHBOUR_WEIGHT`, so flow noise of a few hundredths of a pixel on a static
scene leaves the box at the pixel's own value.

Measured on a 12-frame pan at 64 px (full-width random VGG-19, bench/modes.py's clip): with a
box around the interpolated value alone the frame loss climbed from 1.45x to 1.87x the shot's
reference within 12 frames, with the landing range it stayed at 0.97-1.03x; E_warp was the
same (4.8e-3 and 4.6e-3). Neither half the landing range, a tolerance of 0.5 grey levels, nor
boxing the unreliable pixels at +-24 grey levels instead of leaving them free moved E_warp
(4.3e-3 to 4.5e-3): on that clip what is left is the disagreement between the stylizer's flow
and the metric's on a texture with pixel-scale detail, not what the box lets through.
"""

from __future__ import annotations

import cv2
import numpy as np

from nstd.temporal.flow import pixel_grid, warp

#: Smallest bilinear weight of a neighbour that widens the box (see the module docstring).
MIN_NEIGHBOUR_WEIGHT = 0.25
#: The input's change along the motion is smoothed over this many pixels (Gaussian sigma)
#: before it moves the box: a fade or a change of light is smooth, sensor noise is not.
CHANGE_SIGMA = 3.0


def landing_range(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel min and max of ``image`` over the pixels ``x + flow(x)`` lands between.

    Args:
        image: float32 (H, W, C), e.g. the stylized frame t-1 in [0, 1].
        flow: float32 (H, W, 2) (dx, dy) in pixels on the output grid (frame t -> t-1).

    Returns:
        (low, high), each float32 (H, W, C): over the (up to) 2x2 pixels around the landing
        point whose bilinear weight is at least `MIN_NEIGHBOUR_WEIGHT`; positions outside
        the frame are clamped to its edge (as `nstd.temporal.flow.warp` replicates it).
    """
    h, w = image.shape[:2]
    xs, ys = pixel_grid(h, w)
    corners = []
    for grid, delta, size in ((xs, flow[..., 0], w), (ys, flow[..., 1], h)):
        pos = np.clip(grid + delta, 0.0, size - 1)
        base = np.floor(pos)
        frac = pos - base
        near = base + (frac > 1.0 - MIN_NEIGHBOUR_WEIGHT)  # nearest with enough weight
        far = base + (frac >= MIN_NEIGHBOUR_WEIGHT)
        corners.append((np.clip(near, 0, size - 1).astype(np.intp),
                        np.clip(far, 0, size - 1).astype(np.intp)))
    (x0, x1), (y0, y1) = corners
    samples = [image[y, x] for y in (y0, y1) for x in (x0, x1)]
    return np.minimum.reduce(samples), np.maximum.reduce(samples)


def input_change(previous: np.ndarray, current: np.ndarray, flow_bw: np.ndarray
                 ) -> np.ndarray:
    """How much the input changed along the motion, smoothed: float32 (H, W, 3) in [-1, 1].

    previous, current: uint8 (H, W, 3) input frames t-1 and t; flow_bw: t -> t-1. A fade to
    black darkens every input pixel by a fraction per frame; the stylized frame has to follow,
    which a box around the previous stylized frame alone would not let it (2 grey levels
    against the fade's 20). The start is moved by this change and the box widened by it.
    """
    moved = warp(previous.astype(np.float32) / 255.0, flow_bw)
    change = current.astype(np.float32) / 255.0 - moved
    return cv2.GaussianBlur(change, (0, 0), CHANGE_SIGMA)


def prior_bounds(previous: np.ndarray, warped: np.ndarray, flow_bw: np.ndarray,
                 mask: np.ndarray, tolerance: float, shift: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The box a warm frame t is optimized in (module docstring).

    Args:
        previous: float32 (H, W, 3) in [0, 1], the stylized frame t-1.
        warped: float32 (H, W, 3) in [0, 1], ``previous`` warped onto frame t (the start).
        flow_bw: float32 (H, W, 2), flow from input frame t to input frame t-1.
        mask: float32 (H, W) in [0, 1]; pixels with mask >= 0.5 are constrained.
        tolerance: grey levels (0..255 scale) the box is widened by on each side.
        shift: float32 (H, W, 3), the input's change along the motion (`input_change`): the
            box is widened by its size on both sides (``warped``, the start, is expected
            moved by it already). Moving the box by it instead held a fading frame to the
            previous frame made darker, which is not how a darker frame is stylized: the
            frame loss of a fade to black rose to 4x its shot's reference (13x at the end of
            the fade-in), where widening lets the optimizer find the darker frame's style.

    Returns:
        (lo, hi), each float32 (H, W, 3) in [0, 1] with lo <= warped <= hi.
    """
    low, high = landing_range(previous, flow_bw)
    slack = np.float32(tolerance / 255.0)
    if shift is not None:
        slack = slack + np.abs(shift)
    lo = np.minimum(low, warped) - slack
    hi = np.maximum(high, warped) + slack
    free = (mask < 0.5)[..., None]
    lo = np.where(free, 0.0, np.clip(lo, 0.0, 1.0)).astype(np.float32)
    hi = np.where(free, 1.0, np.clip(hi, 0.0, 1.0)).astype(np.float32)
    return lo, hi

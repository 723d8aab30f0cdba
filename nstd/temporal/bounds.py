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
"""

from __future__ import annotations

import numpy as np

from nstd.temporal.flow import pixel_grid

#: Smallest bilinear weight of a neighbour that widens the box (see the module docstring).
MIN_NEIGHBOUR_WEIGHT = 0.25
#: How much of the landing range the box spans on each side of the warped value (1: all).
SPREAD = 1.0
UNRELIABLE_TOLERANCE: float | None = None


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


def prior_bounds(previous: np.ndarray, warped: np.ndarray, flow_bw: np.ndarray,
                 mask: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The box a warm frame t is optimized in (module docstring).

    Args:
        previous: float32 (H, W, 3) in [0, 1], the stylized frame t-1.
        warped: float32 (H, W, 3) in [0, 1], ``previous`` warped onto frame t (the start).
        flow_bw: float32 (H, W, 2), flow from input frame t to input frame t-1.
        mask: float32 (H, W) in [0, 1]; pixels with mask >= 0.5 are constrained.
        tolerance: grey levels (0..255 scale) the box is widened by on each side.

    Returns:
        (lo, hi), each float32 (H, W, 3) in [0, 1] with lo <= warped <= hi.
    """
    low, high = landing_range(previous, flow_bw)
    slack = np.float32(tolerance / 255.0)
    lo = warped - SPREAD * np.maximum(warped - low, 0.0) - slack
    hi = warped + SPREAD * np.maximum(high - warped, 0.0) + slack
    free = (mask < 0.5)[..., None]
    if UNRELIABLE_TOLERANCE is None:
        wide_lo, wide_hi = 0.0, 1.0
    else:
        wide = np.float32(UNRELIABLE_TOLERANCE / 255.0)
        wide_lo, wide_hi = warped - wide, warped + wide
    lo = np.clip(np.where(free, wide_lo, lo), 0.0, 1.0).astype(np.float32)
    hi = np.clip(np.where(free, wide_hi, hi), 0.0, 1.0).astype(np.float32)
    return lo, hi

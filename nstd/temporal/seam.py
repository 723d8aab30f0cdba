"""Hiding the seam where a long shot was split between two workers (numpy only).

Unit B of a split shot starts ``cluster.unit_overlap`` frames before its own first frame,
cold, and runs warm through those overlap frames, so by its first frame it has settled into a
temporally stable texture — but not the texture unit A reached there: two runs of the
optimization from different starts end in different local minima. Cutting from A to B at
one frame is a visible jump (bench/seam.py: that one frame pair's warp error is 6-20x the
median pair's).

The seam pass (the default): once A and B are both done, the overlap frames are made once
more, in order, as warm frames chained from A's frame before the overlap (the usual temporal
term towards the warped previous frame). Each starts from the cross-fade of A's and B's frame
of its index and is pulled towards both by two more temporal terms whose weights split
`pull_weight` as the cross-fade splits the pixels (`seam_frame`): the chain leaves A
smoothly and arrives at B's texture by B's first own frame. Unlike a unit's own warm frames
these are not boxed (`nstd.temporal.bounds`): they must travel from one texture to the other
within the overlap. Its frames are optimized, not
mixtures, so their loss is a normal frame's (bench/seam.py, full-width net at 96 px, a slow
pan, overlap 12: the worst seam pair 1.48x the median pair, 1.62x with overlap 8; loss 0.91x
unsplit, against 1.71x for the cross-fade alone). Going from A's texture to B's raises each
pair of the overlap to ~1.3-1.4x the median: a longer overlap spreads it thinner, hence
cluster.unit_overlap's default of 12. It costs ``overlap`` warm frames per seam, each run as
soon as both units beside it are done (`nstd.cluster.driver`).

The fallback, `crossfade`: the two overlaps blended, A's weight falling and B's rising — used
for an overlap whose seam pass did not run. It spreads the jump over ``overlap + 1`` pairs,
but a blend of two textures has a much higher style loss than either (bench/seam.py: +73 % mean
frame loss over a 64-frame clip with two seams of 8 frames).

Why not make B agree with A while it runs: B runs at the same time as A, on another GPU; A's
frames do not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The seam pass's pulls cost as much as the frame's reference loss (the loss of its shot's
#: cold frame) at this root-mean-square deviation, in grey levels. So their balance with the
#: style does not depend on the loss weights' scale.
PULL_GREY_LEVELS = 1.0


def pull_weight(reference: float | None) -> float:
    """The weight of a seam pull (a mean squared deviation in [0, 1] units) for a frame whose
    shot's reference loss is ``reference``; 0 when no reference is known."""
    if reference is None or not reference > 0:
        return 0.0
    return reference / (PULL_GREY_LEVELS / 255.0) ** 2


@dataclass(frozen=True)
class SeamFrame:
    """How the seam pass remakes one overlap frame: optimized from ``start`` (the cross-fade
    of A's and B's frames), with temporal terms towards each of ``pulls`` ((frame, share of
    `pull_weight`): A's frame with a falling share, B's with a rising one) besides the one
    towards the warped previous frame. Frames (H, W, 3) float32 in [0, 1]."""

    start: np.ndarray
    pulls: tuple[tuple[np.ndarray, float], ...]


def seam_frame(a: np.ndarray, b: np.ndarray, position: int, length: int) -> SeamFrame:
    """The seam pass's frame ``position`` of an overlap of ``length``: A's frame ``a``, B's
    ``b``; the pulls' shares split as the cross-fade splits the pixels."""
    weight = (position + 1) / (length + 1)
    return SeamFrame(crossfade(a, b, position, length), ((a, 1 - weight), (b, weight)))


def seam_frames(first: int, start: int, cuts: set[int]) -> tuple[int, int]:
    """(chain_from, begin): the seam pass of a unit whose overlap is ``first`` .. ``start-1``
    remakes frames ``begin`` .. ``start - 1``, chained from the previous unit's own frame
    ``chain_from``. That is the frame before the overlap, unless the overlap begins its shot
    (the previous unit is exactly one overlap long): then the overlap's first frame stays
    the previous unit's and the chain starts from it."""
    if first == 0 or first in cuts:
        return first, first + 1
    return first - 1, first


def crossfade(a: np.ndarray, b: np.ndarray, position: int, length: int) -> np.ndarray:
    """Frame ``position`` (0-based) of an overlap of ``length`` frames: A's and B's blended.

    a, b: (H, W, 3) float32 in [0, 1] (A: the previous unit's own frame; B: the next unit's
    overlap frame of the same index). B's weight is ``(position + 1) / (length + 1)``: never
    0 or 1 inside the overlap, so the last frame of A alone and the first frame of B alone
    are each one equal step away.
    """
    if not 0 <= position < length:
        raise ValueError(f"position {position} outside an overlap of {length} frames")
    weight = np.float32((position + 1) / (length + 1))
    return (1.0 - weight) * a + weight * b

"""What a run is given besides its content image: the style target, temporal terms and
per-pixel bounds. Plain data; `nstd.engine.objective` turns them into losses at one size."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Bounds:
    """Per-pixel limits of the optimized image (a video's warm frame: `nstd.temporal.bounds`).

    lo, hi: (1, 3, H, W) float in [0, 1], lo <= hi; resized to the scale being optimized.
    Every evaluated image stays inside them (projected L-BFGS; Adam is clamped).
    """

    lo: Tensor
    hi: Tensor


@dataclass(frozen=True)
class TemporalTerm:
    """Pull the output towards `target` where `mask` is 1 (Ruder et al. 2016)."""

    target: Tensor  # (1, 3, H, W) float in [0, 1], e.g. previous stylized frame warped
    mask: Tensor  # (1, 1, H, W) float in [0, 1], 1 = reliable
    weight: float


@dataclass(eq=False)
class StyleTarget:
    """Style images with normalized blend weights, and their cached Gram targets.

    Made by `Stylizer.prepare_style` and usable only with that stylizer. The cache maps an
    output size (plus content luminance statistics with preserve_color) to the blended Grams.
    """

    images: tuple[Tensor, ...]  # each (1, 3, h, w) float32 in [0, 1], CPU copies
    blend: tuple[float, ...]  # sums to 1
    _owner: object = field(repr=False)
    _cache: OrderedDict[tuple, dict[str, Tensor]] = field(default_factory=OrderedDict,
                                                          repr=False)
    # One (1, 1, h, w) mask in [0, 1] per image (nstd.engine.masks), or None: blended Grams.
    masks: tuple[Tensor, ...] | None = None

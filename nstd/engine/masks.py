"""Spatial style masks: which style applies where (Gatys et al. 2017, "Controlling Perceptual
Factors in Neural Style Transfer", guided Gram matrices).

One greyscale mask per style: 1 (white) = this style, 0 = not this style, grey = a share of
it. Each style's Gram is taken over its own region, weighted by the mask:

    G_k = sum_p m_k(p) F_p F_p^T / (C * sum_p m_k(p))

and compared with that style image's own Gram (never a blend). Each region's term is
weighted by its share of the image (the mask's mean), which is where this departs from the
paper's plain sum: it keeps a pixel's pull towards its style the same as without masks
(G_k's gradient at p is m_k(p) / sum m_k, times the share sum m_k / N: m_k(p) / N), so a
small region does not get a pull many times stronger than a large one, and a single
all-white mask gives exactly the unmasked loss.

Masks are resized to the output (bilinear) and to each layer's feature size (area
averaging, so a layer position weighs the pixels it covers).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import Tensor

from nstd.engine.tiling import stride_of
from nstd.errors import UsageError
from nstd.geometry import same_aspect


def check_mask(mask: Tensor, index: int) -> None:
    """UsageError unless mask is (1, 1, h, w) float in [0, 1] with some white in it."""
    if mask.dim() != 4 or mask.shape[:2] != (1, 1) or not mask.is_floating_point():
        raise ValueError(f"style mask {index}: expected a float tensor (1, 1, H, W), got "
                         f"{tuple(mask.shape)}")
    if float(mask.max()) <= 0.0:
        raise UsageError(f"style mask {index} is empty (all black); paint white where style "
                         f"{index} should apply")


def check_aspect(mask: Tensor, size: tuple[int, int], index: int) -> None:
    """UsageError when the mask's aspect ratio differs from the image's (H, W)."""
    h, w = int(mask.shape[-2]), int(mask.shape[-1])
    if not same_aspect((h, w), size):
        raise UsageError(f"style mask {index} is {w}x{h} but the image is {size[1]}x{size[0]}; "
                         "a mask must have the image's aspect ratio")


def layer_masks(mask: Tensor, size: tuple[int, int],
                layers: Iterable[str]) -> tuple[dict[str, Tensor], float]:
    """A mask (1, 1, h, w) in [0, 1] at each layer's feature size for an image of `size`.

    Returns ({layer: (H // s, W // s) float32}, share), share = the mask's mean at `size`.
    """
    full = F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False,
                         antialias=mask.shape[-2] > size[0] or mask.shape[-1] > size[1])
    full = full.clamp(0.0, 1.0)
    out = {}
    for layer in layers:
        s = stride_of(layer)
        out[layer] = F.interpolate(full, size=(size[0] // s, size[1] // s), mode="area")[0, 0]
    return out, float(full.mean())

"""Image tensors in the engine: colour space (YIQ), resizing and shape checks.

Images are (B, C, H, W) float tensors in [0, 1]. `preserve_color` optimizes the luminance
only and puts the content's chroma back (`recombine`), which YIQ makes exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# FCC YIQ. The I and Q rows sum to 0 and the Y row to 1, so the inverse's Y column is all
# ones: RGB = Y + chroma(I, Q), which makes colour preservation exact (see _recombine).
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.595716, -0.274453, -0.321263],
                            [0.211456, -0.522591, 0.311135]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(image: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) YIQ (Y in [0, 1])."""
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: Tensor) -> Tensor:
    """(B, 3, H, W) YIQ -> (B, 3, H, W) RGB (not clamped)."""
    return torch.einsum("ij,bjhw->bihw", _YIQ_TO_RGB.to(image), image)


def luminance(image: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) YIQ luminance."""
    return rgb_to_yiq(image)[:, :1]


def recombine(y: Tensor, content: Tensor) -> Tensor:
    """Output luminance y (1, 1, H, W) + content chroma -> RGB (1, 3, H, W) in [0, 1].

    Clamping RGB channels independently would shift the hue; instead Y is clamped, per pixel,
    to the range where Y + chroma stays inside [0, 1] in every channel. That range is never
    empty because the content pixel itself lies in it, so the content's I/Q are kept exactly.
    """
    yiq = rgb_to_yiq(content)
    chroma = yiq_to_rgb(torch.cat([torch.zeros_like(yiq[:, :1]), yiq[:, 1:]], dim=1))
    low = (-chroma).amax(dim=1, keepdim=True)
    high = (1.0 - chroma).amin(dim=1, keepdim=True)
    return (torch.minimum(torch.maximum(y, low), high) + chroma).clamp(0.0, 1.0)


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, h, w) -> (B, C, H, W) bilinear, antialiased when shrinking. Same tensor if equal."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                         antialias=shrink)


def check_image(image: Tensor, what: str, channels: int = 3) -> None:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[0] != 1 \
            or image.shape[1] != channels or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{what}: expected a float tensor (1, {channels}, H, W), got {shape}")

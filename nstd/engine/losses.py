"""The loss terms of Gatys et al. (2016) and Ruder et al. (2016), as pure functions.

Every function returns a float32 scalar tensor, whatever the dtype of its inputs: under bf16
autocast the network runs in bf16, but Grams and losses are computed in fp32 (bf16/fp16 Grams
lose precision or overflow on large images).

Normalization, and how it differs from the paper:
- Gatys et al. use the raw Gram G = F F^T and E_l = 1/(4 N_l^2 M_l^2) * sum (G - A)^2, with
  N_l channels and M_l = H_l W_l positions. Here G = F F^T / (N_l M_l) and E_l is the mean
  squared difference over the N_l^2 entries, which is the paper's E_l times 4 / N_l^2. The
  benefit: G no longer grows with the image size, so one style image serves any output size
  (coarse-to-fine, style_scale), and the weights of the PyTorch tutorial apply (content 1,
  style 1e6 with real VGG-19 weights).
- The content loss is the mean (not the paper's half sum) of squared feature differences, so
  it does not grow with the image size either.
- Total variation and the temporal term are means over pixels for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def gram_matrix(features: Tensor) -> Tensor:
    """Normalized Gram matrix, always in fp32 (autocast is switched off inside).

    features (B, C, H, W) any float dtype -> (B, C, C) float32, G = F F^T / (C * H * W).
    """
    if features.dim() != 4:
        raise ValueError(f"expected features (B, C, H, W), got {tuple(features.shape)}")
    b, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().reshape(b, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)).div(c * h * w)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Mean squared difference of two feature maps (B, C, H, W) -> scalar float32."""
    return F.mse_loss(features.float(), target.float())


def style_loss(grams: Mapping[str, Tensor], targets: Mapping[str, Tensor],
               weights: Mapping[str, float]) -> Tensor:
    """sum_l weights[l] * mean((grams[l] - targets[l])^2) -> scalar float32.

    grams, targets: layer name -> (B, C_l, C_l) float32 (targets may have B = 1 and broadcast).
    Layers with weight 0 are skipped; `grams` must hold every other layer in `weights`.
    """
    total: Tensor | None = None
    for layer, weight in weights.items():
        if weight == 0:
            continue
        gram, target = grams[layer], targets[layer]
        term = weight * F.mse_loss(gram, target.expand_as(gram))
        total = term if total is None else total + term
    if total is None:
        some = next(iter(grams.values()), None)
        return torch.zeros((), device=some.device if some is not None else None)
    return total


def tv_loss(image: Tensor) -> Tensor:
    """Total variation: mean squared difference of horizontal plus vertical neighbours.

    image (B, C, H, W) float -> scalar float32. Penalizes the high-frequency noise that the
    style term alone leaves behind.
    """
    x = image.float()
    dy = x[..., 1:, :] - x[..., :-1, :]
    dx = x[..., :, 1:] - x[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def temporal_loss(image: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Ruder et al. short-term temporal loss: sum(mask * (image - target)^2) / (B * C * H * W).

    image, target (B, C, H, W) float in [0, 1] (target: previous stylized frame warped to this
    one); mask (B, 1, H, W) in [0, 1], 1 where the flow is reliable. -> scalar float32.
    """
    diff = (image.float() - target.float()).pow(2)
    return (diff * mask.float()).sum() / diff.numel()

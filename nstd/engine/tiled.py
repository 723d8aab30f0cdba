"""The network's loss terms (content + style) of one image, evaluated whole or tile by tile.

Both terms are functions of sums over feature positions:

    content = w_c * S_c / N_c            S_c = sum_p |F_p - P_p|^2 at the content layer
    style   = w_s * sum_l w_l * sum_r a_r * mean((G_rl - A_rl)^2)
              G_rl = sum_p m_rl(p) F_p F_p^T / (C_l * sum_p m_rl(p))

(r: a style region with its per-position weights m, all ones without masks, and a_r its share
of the image; see `nstd.engine.masks`). Sums over positions add up over tiles exactly (the
cores of `nstd.engine.tiling` partition every layer), so the tiled loss is the whole image's
loss, not a sum of per-tile losses with per-tile statistics (what tiling scripts do, which
leaves seams and lets the style drift from tile to tile).

The gradient, as in Galerne et al. 2022 ("Scaling Painting Style Transfer"): a first pass
without autograd accumulates the sums S over all tiles; the loss is a small function of S,
so dL/dS is known at once; then each tile is run again with autograd and back-propagates
<dL/dS, S_tile> into its box only. A feature position's value and its derivative with
respect to the input are the same in its tile as in the whole image, so the tile gradients
add up to the whole image's gradient. Cost: one extra forward pass per evaluation; memory:
the activations of one tile instead of the whole image's.

`TiledNetworkTerms.apply` wraps this in an autograd Function, so the optimizer still sees
one image, one loss and one gradient, and image-space terms (tv, temporal) are added on the
whole image as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nstd.engine.tiling import Tile, stride_of

Network = Callable[[Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class StyleRegion:
    """One style's targets and where they apply.

    grams: layer -> (1, C, C) float32 target Gram.
    masks: layer -> (H_l, W_l) float32 weights in [0, 1] at that layer's whole-image size,
        or None for the whole image with weight 1.
    share: the region's weight in the style term (its mask's mean; 1 without masks).
    """

    grams: Mapping[str, Tensor]
    masks: Mapping[str, Tensor] | None
    share: float


@dataclass(frozen=True)
class NetworkLoss:
    """What the content and style terms compare against, with their weights."""

    content_layer: str
    content: Tensor | None  # (1, C, H_c, W_c) target features; None: no content term
    content_weight: float
    style_layers: Mapping[str, float]  # layer -> weight, zeros removed
    style_weight: float
    regions: Sequence[StyleRegion]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.content_layer, *self.style_layers]))


def _core_sums(loss: NetworkLoss, feats: Mapping[str, Tensor], tile: Tile,
               full: tuple[int, int]) -> list[Tensor]:
    """The sums of one tile's core: [S_c, then per region and style layer the unnormalized
    weighted Gram sum_p m(p) F_p F_p^T (C, C)], float32 (autograd flows if feats need it)."""
    sums: list[Tensor] = []
    if loss.content is not None and loss.content_weight:
        rows, cols, grows, gcols = tile.layer_slices(stride_of(loss.content_layer), full)
        diff = feats[loss.content_layer][..., rows, cols].float() - \
            loss.content[..., grows, gcols].float()
        sums.append(diff.pow(2).sum())
    for region in loss.regions:
        for layer in loss.style_layers:
            rows, cols, grows, gcols = tile.layer_slices(stride_of(layer), full)
            f = feats[layer][0, :, rows, cols].float()
            flat = f.reshape(f.shape[0], -1)
            if region.masks is not None:
                weight = region.masks[layer][grows, gcols].reshape(1, -1).to(flat)
                sums.append((flat * weight) @ flat.T)
            else:
                sums.append(flat @ flat.T)
    return sums


def _tile_sums(network: Network, loss: NetworkLoss, x: Tensor, tiles: Sequence[Tile]
               ) -> list[Tensor]:
    """`_core_sums` added over every tile's core: the whole image's sums. x (1, 3, H, W)."""
    full = (int(x.shape[-2]), int(x.shape[-1]))
    sums: list[Tensor] | None = None
    for tile in tiles:
        top, bottom, left, right = tile.box
        part = _core_sums(loss, network(x[..., top:bottom, left:right]), tile, full)
        sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
    if sums is None:
        raise ValueError("no tiles")
    return sums


def _terms_from_sums(loss: NetworkLoss, sums: Sequence[Tensor],
                     full: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(content term, style term) as float32 scalars from the whole image's sums."""
    index = 0
    zero = sums[0].new_zeros(()) if sums else torch.zeros(())
    content = zero
    if loss.content is not None and loss.content_weight:
        content = loss.content_weight * sums[0] / loss.content.numel()
        index = 1
    style = zero
    for region in loss.regions:
        region_total = zero
        for layer, weight in loss.style_layers.items():
            channels = sums[index].shape[0]
            if region.masks is not None:
                mass = region.masks[layer].sum().clamp_min(1e-8)
            else:
                stride = stride_of(layer)
                mass = torch.tensor(float((full[0] // stride) * (full[1] // stride)))
            gram = (sums[index] / (channels * mass)).unsqueeze(0)
            target = region.grams[layer]
            region_total = region_total + weight * F.mse_loss(gram, target.expand_as(gram))
            index += 1
        style = style + region.share * region_total
    return content, loss.style_weight * style


def whole_terms(network: Network, loss: NetworkLoss, x: Tensor) -> tuple[Tensor, Tensor]:
    """(content, style) terms of x (1, 3, H, W) float in [0, 1] in one pass, with autograd."""
    full = (int(x.shape[-2]), int(x.shape[-1]))
    tile = Tile((0, full[0], 0, full[1]), (0, full[0], 0, full[1]))
    return _terms_from_sums(loss, _core_sums(loss, network(x), tile, full), full)


class TiledNetworkTerms(torch.autograd.Function):
    """(content, style) terms of an image evaluated tile by tile; exact value and gradient.

    apply(x, network, loss, tiles): x (1, 3, H, W) float32 in [0, 1] (may require grad; may
    be an expanded view of a luminance image) -> two float32 scalars.
    """

    @staticmethod
    def forward(ctx, x: Tensor, network: Network, loss: NetworkLoss,  # type: ignore[override]
                tiles: Sequence[Tile]) -> tuple[Tensor, Tensor]:
        full = (int(x.shape[-2]), int(x.shape[-1]))
        sums = _tile_sums(network, loss, x, tiles)
        content, style = _terms_from_sums(loss, sums, full)
        ctx.save_for_backward(x, *sums)
        ctx.network, ctx.loss, ctx.tiles = network, loss, tuple(tiles)
        return content, style

    @staticmethod
    def backward(ctx, grad_content: Tensor,  # type: ignore[override]
                 grad_style: Tensor) -> tuple[Tensor | None, None, None, None]:
        x, *sums = ctx.saved_tensors
        loss: NetworkLoss = ctx.loss
        full = (int(x.shape[-2]), int(x.shape[-1]))
        with torch.enable_grad():
            leaves = [s.detach().requires_grad_(True) for s in sums]
            content, style = _terms_from_sums(loss, leaves, full)
            # dL/dS: the gradient of the global loss with respect to each global sum.
            outer = content * grad_content + style * grad_style
            d_sums = torch.autograd.grad(outer, leaves, allow_unused=True)
            d_sums = [torch.zeros_like(s) if d is None else d
                      for s, d in zip(leaves, d_sums, strict=True)]
            grad = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
            for tile in ctx.tiles:
                top, bottom, left, right = tile.box
                box = x[..., top:bottom, left:right].detach().requires_grad_(True)
                part = _core_sums(loss, ctx.network(box), tile, full)
                surrogate = sum(((d * s).sum() for d, s in zip(d_sums, part, strict=True)),
                                start=box.new_zeros(()))
                if surrogate.requires_grad:
                    (g,) = torch.autograd.grad(surrogate, box)
                    grad[..., top:bottom, left:right] += g
        return grad, None, None, None


def tiled_terms(network: Network, loss: NetworkLoss, x: Tensor,
                tiles: Sequence[Tile]) -> tuple[Tensor, Tensor]:
    """(content, style) terms of x (1, 3, H, W) float in [0, 1], by `tiles`; differentiable."""
    if len(tiles) <= 1:
        return whole_terms(network, loss, x)
    content, style = TiledNetworkTerms.apply(x, network, loss, tuple(tiles))
    return content, style


@torch.no_grad()
def tiled_features(network: Network, x: Tensor, layer: str, tiles: Sequence[Tile]) -> Tensor:
    """One layer's whole-image features of x (1, 3, H, W) float in [0, 1], assembled from
    tile cores: (1, C, H // s, W // s) float, s the layer's stride. Equal to network(x)[layer]."""
    full = (int(x.shape[-2]), int(x.shape[-1]))
    stride = stride_of(layer)
    out: Tensor | None = None
    for tile in tiles:
        top, bottom, left, right = tile.box
        feats = network(x[..., top:bottom, left:right])[layer]
        if out is None:
            out = feats.new_empty((1, feats.shape[1], full[0] // stride, full[1] // stride))
        rows, cols, grows, gcols = tile.layer_slices(stride, full)
        out[..., grows, gcols] = feats[..., rows, cols]
    assert out is not None, "no tiles"
    return out


@torch.no_grad()
def tiled_grams(network: Network, x: Tensor, layers: Sequence[str],
                tiles: Sequence[Tile]) -> dict[str, Tensor]:
    """Normalized Grams (1, C, C) float32 of x (1, 3, H, W) in [0, 1] for `layers`, summed
    over tile cores; equal to `nstd.engine.losses.gram_matrix` of the whole image's features."""
    full = (int(x.shape[-2]), int(x.shape[-1]))
    loss = NetworkLoss(layers[0], None, 0.0, {layer: 1.0 for layer in layers}, 0.0,
                       [StyleRegion({}, None, 1.0)])
    sums = _tile_sums(network, loss, x, tiles)
    grams = {}
    for layer, total in zip(layers, sums, strict=True):
        stride = stride_of(layer)
        positions = (full[0] // stride) * (full[1] // stride)
        grams[layer] = (total / (total.shape[0] * positions)).unsqueeze(0)
    return grams

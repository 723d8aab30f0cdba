"""The objective a run minimises, at one size: the network, the targets, the weighted terms.

`StyleObjective` is the part of `nstd.engine.stylizer.Stylizer` that knows what the loss of
an image is: the network under the configured precision and memory format, the style Grams
(computed once per style target and output size, and cached in the `StyleTarget`), the
content features and tiles of each scale (a `Problem`), and the weighted content, style, tv
and temporal terms. The stylizer adds the optimization around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nstd.config import StyleConfig
from nstd.engine.features import VGGFeatures
from nstd.engine.losses import content_loss, gram_matrix, style_loss, temporal_loss, tv_loss
from nstd.engine.masks import check_mask, layer_masks
from nstd.engine.memory import (
    activation_bytes_per_pixel,
    core_side_for,
    image_state_bytes_per_pixel,
    resolve_budget,
)
from nstd.engine.pixels import check_image, luminance, resize
from nstd.engine.targets import Bounds, StyleTarget, TemporalTerm
from nstd.engine.tiled import NetworkLoss, StyleRegion, tiled_features, tiled_grams, tiled_terms
from nstd.engine.tiling import Tile, plan_tiles, stride_of
from nstd.errors import ConfigError, UsageError

# Blended Gram sets kept per StyleTarget (one per output size, or per content luminance
# statistics with preserve_color); bounded so a long video cannot grow it.
_GRAM_CACHE_SIZE = 8


@dataclass
class Problem:
    """Everything the loss needs at one size; built once per scale."""

    size: tuple[int, int]
    content: Tensor  # content-layer features of the content image at this size
    grams: dict[str, Tensor]  # blended style Grams
    temporal: list[tuple[Tensor, Tensor, float]]  # (target, mask, weight) at this size
    chroma_source: Tensor  # content RGB at this size (colour recombination)
    bounds: tuple[Tensor, Tensor] | None = None  # (lo, hi) of the optimized image, this size
    # Set when the network terms go through nstd.engine.tiled (tiles, or style masks):
    network: NetworkLoss | None = None
    tiles: tuple[Tile, ...] = ()  # more than one: evaluated tile by tile


class StyleObjective:
    """The loss of an image at one size, for a fixed network, loss settings and device.

    Built by `Stylizer` (whose docstring lists the constructor's arguments); holds what the
    optimization needs to evaluate an image, and the caches that make a video's frames cheap.
    """

    def __init__(self, features: VGGFeatures, style: StyleConfig, device: torch.device,
                 precision: str = "fp32", channels_last: bool = False,
                 sync_every: int = 1, lag: int | None = None,
                 compile_network: bool = False,
                 max_memory_gb: float | str | None = None, auto_memory_share: float = 0.5,
                 tile_side: int | None = None) -> None:
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"model.precision: must be fp32 or bf16, got {precision!r}")
        needed = [style.content_layer, *style.style_layers]
        missing = [name for name in needed if name not in features.layers]
        if missing:
            raise ValueError(f"the feature extractor does not provide {missing}; build it with "
                             "the content and style layers of this StyleConfig")
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        if lag is not None and lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        if tile_side is not None and tile_side < 1:
            raise ValueError(f"tile_side must be >= 1 or None, got {tile_side}")
        if not 0 < auto_memory_share <= 1:
            raise ConfigError(f"model.auto_memory_share: must be in (0, 1], got "
                              f"{auto_memory_share}")
        self.max_memory_gb = max_memory_gb
        self.auto_memory_share = auto_memory_share
        self.tile_side = tile_side
        self._tiles_by_size: dict[tuple[int, int], tuple[Tile, ...]] = {}
        self.device = torch.device(device)
        self.style = style
        self.precision = precision
        self.channels_last = channels_last
        self.sync_every = sync_every
        self.lag = (2 if self.device.type == "cuda" else 0) if lag is None else lag
        self.features = features.to(self.device)
        if channels_last:
            self.features = self.features.to(memory_format=torch.channels_last)
        self.compile_network = compile_network
        self._network: Callable[[Tensor], dict[str, Tensor]] = self.features
        if compile_network:
            # dynamic=False: a video has one size, and static shapes compile the fastest code.
            self._network = torch.compile(self.features, dynamic=False)
        if self.device.type == "cuda":
            # TF32 for convolutions and fp32 matmuls (Grams): ~10-bit mantissa products with
            # fp32 accumulation is ample for a loss driven to a few significant digits.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            # Shapes repeat for thousands of iterations (every frame of a video has the same
            # size): let cuDNN time its algorithms once per shape and keep the fastest.
            torch.backends.cudnn.benchmark = True
        self._style_weights = {k: float(v) for k, v in style.style_layers.items() if v != 0}
        # The objective the optimizer sees is divided by this (module docstring).
        self.loss_scale = (style.content_weight + style.style_weight + style.tv_weight) or 1.0
        self._layers = tuple(dict.fromkeys([style.content_layer, *self._style_weights]))
        self._token = object()

    # ----------------------------------------------------------------- style targets

    def prepare_style(self, images: Sequence[Tensor], blend: Sequence[float],
                      masks: Sequence[Tensor] | None = None) -> StyleTarget:
        """Style images (each (1, 3, h, w) float in [0, 1]) and blend weights -> StyleTarget.

        Weights must be >= 0 with a positive sum; they are normalized to sum 1 and the Gram
        matrices are blended with them. Grams are computed lazily per output size and cached.
        masks: one (1, 1, h, w) float mask in [0, 1] per image (white = that style): each
        style then applies to its own region with its own Grams, and the blend weights are
        not used (`nstd.engine.masks`). A mask applies to every frame of a video.
        """
        if not images:
            raise UsageError("no style image given; add at least one style")
        if len(blend) != len(images):
            raise UsageError(f"{len(images)} style images but {len(blend)} blend weights; "
                             "give one weight per style")
        weights = [float(w) for w in blend]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise UsageError(f"style blend weights must be >= 0 with a positive sum, "
                             f"got {weights}")
        for i, image in enumerate(images):
            check_image(image, f"style image {i + 1}")
        copies = tuple(img.detach().to("cpu", torch.float32).clone() for img in images)
        total = sum(weights)
        mask_copies = None
        if masks is not None:
            if len(masks) != len(images):
                raise UsageError(f"{len(images)} style images but {len(masks)} style masks; "
                                 "give one mask per style, or none")
            for i, mask in enumerate(masks):
                check_mask(mask, i + 1)
            mask_copies = tuple(m.detach().to("cpu", torch.float32).clamp(0, 1).clone()
                                for m in masks)
        return StyleTarget(copies, tuple(w / total for w in weights), self._token,
                           masks=mask_copies)

    def _style_grams(self, target: StyleTarget, size: tuple[int, int],
                     stats: tuple[float, float] | None) -> dict[str, Tensor]:
        """Blended Gram targets for an output of `size`, cached in `target`.

        The style image is resized so its longest side is style_scale times the output's.
        With preserve_color its luminance is matched to the content's mean/std `stats`.
        """
        key = (tuple(size), stats)
        if key in target._cache:
            target._cache.move_to_end(key)
            return target._cache[key]
        long_side = max(1, round(self.style.style_scale * max(size)))
        blended: dict[str, Tensor] = {}
        with torch.no_grad():
            for image, weight in zip(target.images, target.blend, strict=True):
                if weight == 0:
                    continue
                prepared = self._prepare_style_image(image, long_side, stats)
                grams = self._image_grams(prepared)
                for layer in self._style_weights:
                    gram = weight * grams[layer]
                    blended[layer] = gram if layer not in blended else blended[layer] + gram
        target._cache[key] = blended
        while len(target._cache) > _GRAM_CACHE_SIZE:
            target._cache.popitem(last=False)
        return blended

    def _own_grams(self, target: StyleTarget, index: int, size: tuple[int, int],
                   stats: tuple[float, float] | None) -> dict[str, Tensor]:
        """Style image `index`'s own (unblended) Grams for an output of `size`, cached."""
        key = (tuple(size), stats, index)
        if key not in target._cache:
            long_side = max(1, round(self.style.style_scale * max(size)))
            with torch.no_grad():
                prepared = self._prepare_style_image(target.images[index], long_side, stats)
                target._cache[key] = self._image_grams(prepared)
            while len(target._cache) > _GRAM_CACHE_SIZE * max(1, len(target.images)):
                target._cache.popitem(last=False)
        target._cache.move_to_end(key)
        return target._cache[key]

    def _image_grams(self, rgb: Tensor) -> dict[str, Tensor]:
        """Normalized Grams (1, C, C) of rgb (1, 3, h, w) in [0, 1] for the style layers;
        tile by tile when the image is too large for the memory budget."""
        if not self._style_weights:
            return {}
        tiles = self.tiles((int(rgb.shape[-2]), int(rgb.shape[-1])))
        if len(tiles) > 1:
            return tiled_grams(self._forward, rgb, tuple(self._style_weights), tiles)
        feats = self._forward(rgb)
        return {layer: gram_matrix(feats[layer]) for layer in self._style_weights}

    def tiles(self, size: tuple[int, int]) -> tuple[Tile, ...]:
        """The tiles an image of `size` (H, W) is evaluated by (one: the whole image).

        From `tile_side` when set, else from the memory budget (`nstd.engine.memory`):
        tiles only when the whole image's activations would not fit. Decided once per size
        for this stylizer, so the frames of a video are all cut the same way even though an
        'auto' budget moves with the free memory (and a too-small budget is logged once).
        """
        size = (int(size[0]), int(size[1]))
        known = self._tiles_by_size.get(size)
        if known is None:
            if len(self._tiles_by_size) >= _GRAM_CACHE_SIZE:
                self._tiles_by_size.clear()
            known = self._tiles_by_size[size] = self._plan_tiles(size)
        return known

    def _plan_tiles(self, size: tuple[int, int]) -> tuple[Tile, ...]:
        layers = self._layers
        core = self.tile_side
        if core is None:
            budget = resolve_budget(self.max_memory_gb, self.auto_memory_share, self.device)
            if budget is None:
                return (Tile((0, size[0], 0, size[1]), (0, size[0], 0, size[1])),)
            channels = 1 if self.style.preserve_color else 3
            history = self.style.lbfgs_history if self.style.optimizer == "lbfgs" else 0
            content = self.style.content_layer
            content_channels = self.features.channels(content) / stride_of(content) ** 2
            core = core_side_for(budget, size,
                                 activation_bytes_per_pixel(self.features, layers),
                                 image_state_bytes_per_pixel(channels, history,
                                                             content_channels), layers)
            if core is None:
                return (Tile((0, size[0], 0, size[1]), (0, size[0], 0, size[1])),)
        return tuple(plan_tiles(size, core, layers))

    def _prepare_style_image(self, image: Tensor, long_side: int,
                             stats: tuple[float, float] | None) -> Tensor:
        h, w = image.shape[-2:]
        scale = long_side / max(h, w)
        # Never below the network's minimum side, or the deepest layer would be empty.
        scale = max(scale, self.features.min_side / min(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = resize(image.to(self.device), size)
        if stats is None:
            return image
        y = luminance(image)
        mean, std = stats
        y = (y - y.mean()) / (y.std() + 1e-6) * std + mean
        return y.expand(-1, 3, -1, -1)

    # ----------------------------------------------------------------- losses

    def _forward(self, rgb: Tensor) -> dict[str, Tensor]:
        """The network under the configured precision/memory format; rgb (1, 3, H, W)."""
        if self.channels_last:
            rgb = rgb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            return self._network(rgb)

    def _term_names(self, problem: Problem) -> tuple[str, ...]:
        """Names of the values `_values` stacks: the optimized objective (total plus the
        temporal term), the total, then each weighted term."""
        names = ("objective", "total", "content", "style", "tv")
        return names + ("temporal",) if problem.temporal else names

    def _values(self, problem: Problem, x: Tensor) -> Tensor:
        """[objective, total, *terms] of image x, a float32 vector on the device."""
        terms = self._terms(problem, x)
        total = terms[0] + terms[1] + terms[2]
        objective = total + terms[3] if len(terms) > 3 else total
        return torch.stack([objective, total, *terms])

    def _terms(self, problem: Problem, x: Tensor) -> list[Tensor]:
        """Weighted loss terms of image x (1, C, H, W), C = 1 (luminance) or 3: content,
        style, tv[, temporal]. Each is a float32 scalar."""
        s = self.style
        scale = self.loss_scale
        zero = x.new_zeros(())
        terms = [
            *self._network_terms(problem, x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x),
            s.tv_weight / scale * tv_loss(x) if s.tv_weight else zero,
        ]
        if problem.temporal:
            terms.append(sum((w / scale * temporal_loss(x, t, m)
                              for t, m, w in problem.temporal), start=zero))
        return terms

    def _network_terms(self, problem: Problem, rgb: Tensor) -> list[Tensor]:
        """Weighted content and style terms of rgb (1, 3, H, W) float in [0, 1]: in one
        pass, or through `nstd.engine.tiled` (tiles, masks) with the same value and gradient.
        Image-space terms (tv, temporal) stay on the whole image in `_terms`."""
        if problem.network is not None:
            return list(tiled_terms(self._forward, problem.network, rgb, problem.tiles))
        s = self.style
        scale = self.loss_scale
        feats = self._forward(rgb)
        zero = rgb.new_zeros(())
        return [
            s.content_weight / scale * content_loss(feats[s.content_layer], problem.content)
            if s.content_weight else zero,
            s.style_weight / scale * style_loss({k: gram_matrix(feats[k])
                                                 for k in self._style_weights},
                                                problem.grams, self._style_weights)
            if s.style_weight and self._style_weights else zero,
        ]

    def _problem(self, content: Tensor, target: StyleTarget,
                 temporal: Sequence[TemporalTerm], size: tuple[int, int],
                 bounds: Bounds | None = None) -> Problem:
        """Targets at one size. content (1, 3, H, W) on the device."""
        rgb = resize(content, size)
        x = rgb
        stats = None
        if self.style.preserve_color:
            x = luminance(rgb)
            # Rounded so that a static scene hits the Gram cache frame after frame.
            mean, std = torch.stack([x.mean(), x.std()]).tolist()
            stats = (round(mean, 4), round(std, 4))
        tiles = self.tiles(size)
        rgb_in = x.expand(-1, 3, -1, -1)
        if len(tiles) > 1:
            content_feats = tiled_features(self._forward, rgb_in, self.style.content_layer,
                                           tiles)
        else:
            with torch.no_grad():
                content_feats = self._forward(rgb_in)[self.style.content_layer]
        terms = []
        for term in temporal:
            t = resize(term.target.to(self.device, torch.float32), size)
            m = resize(term.mask.to(self.device, torch.float32), size)
            terms.append((luminance(t) if self.style.preserve_color else t, m,
                          float(term.weight)))
        box = None
        if bounds is not None:
            lo, hi = (resize(b.to(self.device, torch.float32), size) for b in (bounds.lo,
                                                                            bounds.hi))
            # Luminance is a positive combination of R, G and B, so per-channel limits bound
            # it by the luminance of the limits.
            box = (luminance(lo), luminance(hi)) if self.style.preserve_color else (lo, hi)
            box = (box[0].contiguous(), torch.maximum(box[0], box[1]).contiguous())
        if target.masks is not None:
            regions = []
            for index, mask in enumerate(target.masks):
                per_layer, share = layer_masks(mask.to(self.device), size, self._style_weights)
                regions.append(StyleRegion(self._own_grams(target, index, size, stats),
                                           per_layer, share))
            return Problem(tuple(size), content_feats.detach(), {}, terms, rgb, box,
                            network=self._network_loss(content_feats.detach(), regions),
                            tiles=tiles)
        grams = self._style_grams(target, size, stats)
        problem = Problem(tuple(size), content_feats.detach(), grams, terms, rgb, box)
        if len(tiles) > 1:
            problem.tiles = tiles
            problem.network = self._network_loss(problem.content, [StyleRegion(grams, None, 1.0)])
        return problem

    def _network_loss(self, content: Tensor, regions: list[StyleRegion]) -> NetworkLoss:
        """The content and style terms for `nstd.engine.tiled`, weights divided by
        `loss_scale` as in `_network_terms`."""
        s, scale = self.style, self.loss_scale
        return NetworkLoss(s.content_layer, content, s.content_weight / scale,
                           self._style_weights if s.style_weight else {},
                           s.style_weight / scale, regions)

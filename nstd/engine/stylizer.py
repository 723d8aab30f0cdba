"""The optimization engine: Gatys et al. style transfer on tensors. Knows nothing of files.

    target = stylizer.prepare_style([style_image], [1.0])    # once per style (Grams cached)
    result = stylizer.run(content, target)                   # once per image or video frame

Images are (1, 3, H, W) float32 RGB in [0, 1], on any device; results come back on the CPU.
Progress goes out through a callback receiving `Progress`; nothing here prints.

Choices that depart from the paper or from common code, and why:
- The default optimizer is `nstd.engine.optim.BoxLBFGS`: L-BFGS whose every trial point is
  one network evaluation, with a backtracking line search decided on the device and steps
  that do not depend on the loss's absolute scale. Fixed-step L-BFGS (torch's, as this engine
  used before) stalled at 0.9x the start loss on some style images and converged on others
  depending only on the loss weights' magnitude (issue 10; `bench/convergence.py` measures
  it over a panel of dissimilar pairs). Budgets count network evaluations, so progress,
  early stopping and `should_stop` are checked every evaluation.
- The image is kept inside [0, 1] throughout (projected steps; Adam is clamped after each
  step), so every evaluated image is a valid one and the returned image is the optimized
  image itself, not a clamped copy of an iterate that strayed outside [0, 1].
- Each scale returns its lowest-loss evaluated image (with the line search that is the
  search's base point), and progress reports that image's loss, so the last progress line,
  the summary and the result agree.
- Nothing in the iteration loop reads a value back to the host on CUDA: loss values are
  copied to pinned memory asynchronously and read `lag` iterations later (see `_Tracker`).
- Style Grams are computed once per (style target, output size) and cached in the
  `StyleTarget`; content features once per scale of each run.
- The optimizer sees the objective divided by content_weight + style_weight + tv_weight
  (`loss_scale`), and every figure reported is multiplied back. The optimizer is scale-free,
  so in exact arithmetic this changes nothing; in float32 it makes a common factor on the
  weights (x10, x0.1) leave every iterate identical instead of diverging by rounding along
  a chaotic trajectory (a video's frames differed by up to 13 grey levels at x10 without it).

What the loss figures mean (the same everywhere: progress, results, `--json`, docs/progress.md):
`total` = content + style + tv, the weighted Gatys et al. objective; a video's warm frames
also minimise `temporal` (the pull towards the warped previous frame), which is reported
under its own name and never included in `total`, so totals compare across modes.
`initial_loss` is the total of the start image at the output size, `final_loss` that of the
returned image.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from nstd.config import ModelConfig, StyleConfig
from nstd.engine.features import VGGFeatures
from nstd.engine.losses import content_loss, gram_matrix, style_loss, temporal_loss, tv_loss
from nstd.engine.masks import check_aspect, check_mask, layer_masks
from nstd.engine.memory import (
    activation_bytes_per_pixel,
    core_side_for,
    image_state_bytes_per_pixel,
    resolve_budget,
)
from nstd.engine.optim import BoxLBFGS
from nstd.engine.tiled import NetworkLoss, StyleRegion, tiled_features, tiled_grams, tiled_terms
from nstd.engine.tiling import Tile, plan_tiles, stride_of
from nstd.engine.weights import load_vgg19_state_dict
from nstd.errors import ConfigError, Interrupted, NstdError, OutOfMemoryError, UsageError
from nstd.text import plural

log = logging.getLogger(__name__)

# Blended Gram sets kept per StyleTarget (one per output size, or per content luminance
# statistics with preserve_color); bounded so a long video cannot grow it.
_GRAM_CACHE_SIZE = 8


# --------------------------------------------------------------------------- public data


@dataclass(frozen=True)
class Progress:
    """One optimizer iteration (= one network evaluation), as reported to `progress`."""

    iteration: int  # iterations done in this run, over all scales (1-based)
    total: int  # iterations planned over all scales (early stopping may end sooner)
    scale_index: int  # 0-based index of the current scale
    scale_count: int
    size: tuple[int, int]  # (height, width) of the image being optimized
    loss: float  # 'total' of the best image so far at this scale (module docstring)
    losses: dict[str, float]  # its weighted terms: content, style, tv[, temporal], total
    elapsed: float  # seconds since run() started


@dataclass(frozen=True)
class StylizeResult:
    image: Tensor  # (1, 3, H, W) float32 in [0, 1], on the CPU
    initial_loss: float  # 'total' of the start image at the output size
    final_loss: float  # 'total' of the returned image (temporal term excluded)
    losses: dict[str, float]  # weighted terms of the returned image, plus 'total'
    iterations: int  # optimizer iterations run, over all scales
    seconds: float
    stopped_early: bool  # the final scale ended by early stopping, before its budget


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


# --------------------------------------------------------------------------- colour and size


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


def _recombine(y: Tensor, content: Tensor) -> Tensor:
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


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, h, w) -> (B, C, H, W) bilinear, antialiased when shrinking. Same tensor if equal."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                         antialias=shrink)


def _check_image(image: Tensor, what: str, channels: int = 3) -> None:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[0] != 1 \
            or image.shape[1] != channels or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{what}: expected a float tensor (1, {channels}, H, W), got {shape}")


# --------------------------------------------------------------------------- device


def resolve_device(spec: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; ConfigError if CUDA is asked for
    but missing."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"model.device: {spec} requested but CUDA is not available "
                              "(no NVIDIA GPU/driver, or a CPU-only PyTorch); use auto or cpu")
        index = int(spec[5:]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"model.device: {spec} does not exist; this machine has "
                              f"{plural(torch.cuda.device_count(), 'CUDA device')}")
        return torch.device("cuda", index)
    raise ConfigError(f"model.device: must be auto, cpu, cuda or cuda:N, got {spec!r}")


# --------------------------------------------------------------------------- internals


@dataclass
class _Problem:
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


class _Tracker:
    """Counts iterations over a run: progress reports, early stopping, stop requests.

    Loss values stay on the device; the host reads them back in batches of `sync_every`
    iterations, and on CUDA (`lag` > 0) only once they are `lag` iterations old: each
    iteration's values are copied into pinned host memory without blocking, and after
    iteration i the host waits only for iteration i - lag, while iterations i - lag + 1 .. i
    are still queued behind it. So the GPU never runs dry waiting for Python, and early
    stopping stays deterministic: convergence seen at iteration j always stops the scale after
    iteration j + lag (those extra iterations only lower the loss).
    """

    def __init__(self, total: int, scale_count: int, started: float, sync_every: int,
                 progress: Callable[[Progress], None] | None,
                 should_stop: Callable[[], bool] | None, lag: int = 0,
                 loss_scale: float = 1.0) -> None:
        self.total, self.scale_count, self.started = total, scale_count, started
        self.loss_scale = loss_scale  # device values x this = the reported figures
        self.sync_every, self.lag = sync_every, lag
        self.progress, self.should_stop = progress, should_stop
        self.done = 0
        self.first_loss: float | None = None
        self.target_loss: float | None = None  # stop once 'total' is at most this
        self._pending: list[tuple[int, Tensor, object | None]] = []
        self._history: list[float] = []
        self._scale = (0, (0, 0), ("objective", "total"), 0.0, 1)

    def begin_scale(self, index: int, size: tuple[int, int], names: tuple[str, ...],
                    tolerance: float, window: int) -> None:
        self._scale = (index, size, names, tolerance, window)
        self._history = []

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted("stylization stopped on request")

    def record(self, values: Tensor) -> bool:
        """Note one iteration's best-so-far losses ([objective, total, *terms], on the
        device; `names` gives the terms); True = converged."""
        self.done += 1
        event = None
        if values.device.type == "cuda" and self.lag > 0:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            values = host
        self._pending.append((self.done, values, event))
        ready = sum(1 for i, _, _ in self._pending if i <= self.done - self.lag)
        return self.flush(ready) if ready >= self.sync_every else False

    def flush(self, count: int | None = None) -> bool:
        """Process the `count` oldest pending iterations (default all); True = converged."""
        batch = self._pending[:len(self._pending) if count is None else count]
        if not batch:
            return False
        del self._pending[:len(batch)]
        for _, _, event in batch:
            if event is not None:
                event.synchronize()  # type: ignore[attr-defined]
        # The one host sync (on CUDA with lag: of values copied long ago, no stall).
        rows = [[v * self.loss_scale for v in row]
                for row in torch.stack([v for _, v, _ in batch]).tolist()]
        index, size, names, tolerance, window = self._scale
        converged = False
        for (iteration, _, _), row in zip(batch, rows, strict=True):
            # The values are the best so far: a non-finite trial is simply rejected by the
            # line search, so only a start whose loss is not finite leaves them infinite.
            if not math.isfinite(row[0]):
                raise NstdError(f"the loss of the start image is not finite ({row[0]}) at "
                                f"iteration {iteration}; lower style.style_weight")
            if self.first_loss is None:
                self.first_loss = row[1]
            self._history.append(row[0])
            if self.progress is not None:
                losses = dict(zip(names[2:], row[2:], strict=True))
                losses["total"] = row[1]
                self.progress(Progress(iteration, self.total, index, self.scale_count, size,
                                       row[1], losses, time.monotonic() - self.started))
            converged = converged or self._converged(tolerance, window) \
                or (self.target_loss is not None and row[1] <= self.target_loss)
        return converged

    def _converged(self, tolerance: float, window: int) -> bool:
        """Relative loss change over the last `window` iterations below `tolerance`."""
        if tolerance <= 0 or len(self._history) <= window:
            return False
        old, new = self._history[-window - 1], self._history[-1]
        if not (math.isfinite(old) and math.isfinite(new)):
            return False
        return abs(old - new) <= tolerance * max(abs(old), 1e-30)


# --------------------------------------------------------------------------- the stylizer


class Stylizer:
    """Gatys et al. style transfer with a fixed network, loss settings and device.

    Args:
        features: the VGG-19 extractor; must provide style.content_layer and every style
            layer. It is moved to `device`.
        style: loss weights, layers, optimizer, budget, scales, init, seed, colour option.
        device: where the optimization runs (see `resolve_device`).
        precision: 'fp32', or 'bf16' = autocast the network only; Grams and losses stay fp32.
        channels_last: run the network in channels-last memory format (faster on CUDA).
        sync_every: iterations between host syncs for progress/early stopping (1 = exact).
        lag: iterations the host may run ahead of the loss values it has read (see
            `_Tracker`); default 2 on CUDA (no stall per iteration), 0 elsewhere (exact).
        compile_network: run the network through `torch.compile` (fused elementwise work,
            fewer kernel launches; each new image size compiles once, so the first frames
            are slower). Meant for CUDA; model.compile turns it on there.
        max_memory_gb: memory one optimization may use beyond the network (GiB, or 'auto':
            `auto_memory_share` of the free CUDA memory or available RAM; see
            `nstd.engine.memory`). When an image's activations would not fit, the content
            and style terms are evaluated tile by tile, exactly (`nstd.engine.tiled`).
            None: never tile.
        tile_side: tile core side in pixels, whatever the budget (tests, benchmarks, and the
            retry after running out of memory); None: chosen from the budget.
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
            _check_image(image, f"style image {i + 1}")
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
        image = _resize(image.to(self.device), size)
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

    def _term_names(self, problem: _Problem) -> tuple[str, ...]:
        """Names of the values `_values` stacks: the optimized objective (total plus the
        temporal term), the total, then each weighted term."""
        names = ("objective", "total", "content", "style", "tv")
        return names + ("temporal",) if problem.temporal else names

    def _values(self, problem: _Problem, x: Tensor) -> Tensor:
        """[objective, total, *terms] of image x, a float32 vector on the device."""
        terms = self._terms(problem, x)
        total = terms[0] + terms[1] + terms[2]
        objective = total + terms[3] if len(terms) > 3 else total
        return torch.stack([objective, total, *terms])

    def _terms(self, problem: _Problem, x: Tensor) -> list[Tensor]:
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

    def _network_terms(self, problem: _Problem, rgb: Tensor) -> list[Tensor]:
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
                 bounds: Bounds | None = None) -> _Problem:
        """Targets at one size. content (1, 3, H, W) on the device."""
        rgb = _resize(content, size)
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
            t = _resize(term.target.to(self.device, torch.float32), size)
            m = _resize(term.mask.to(self.device, torch.float32), size)
            terms.append((luminance(t) if self.style.preserve_color else t, m,
                          float(term.weight)))
        box = None
        if bounds is not None:
            lo, hi = (_resize(b.to(self.device, torch.float32), size) for b in (bounds.lo,
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
            return _Problem(tuple(size), content_feats.detach(), {}, terms, rgb, box,
                            network=self._network_loss(content_feats.detach(), regions),
                            tiles=tiles)
        grams = self._style_grams(target, size, stats)
        problem = _Problem(tuple(size), content_feats.detach(), grams, terms, rgb, box)
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

    # ----------------------------------------------------------------- running

    def run(self, content: Tensor, target: StyleTarget, *, init: Tensor | None = None,
            iterations: int | None = None, coarse_to_fine: bool = True,
            temporal: Sequence[TemporalTerm] = (),
            progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
            tolerance: float | None = None,
            tolerance_window: int | None = None,
            bounds: Bounds | None = None,
            target_loss: float | None = None) -> StylizeResult:
        """Stylize `content` (1, 3, H, W) float in [0, 1] towards `target`.

        init: start image (1, 3, h, w) in [0, 1] (resized to fit), else style.init
            ('content' or seeded 'noise'; 'image' needs `init`).
        iterations: budget at the final scale (default style.iterations); coarser scales get
            style.coarse_iterations each. coarse_to_fine=False optimizes at full size only.
        temporal: extra terms pulling the output towards given images (video).
        tolerance, tolerance_window: early stopping for this run (default style.tolerance and
            style.tolerance_window), e.g. a short window for a video's short warm budget.
        bounds: per-pixel limits every evaluated image stays inside (a video's warm frame).
        target_loss: the final scale stops as soon as the best image's 'total' is at most
            this (a video's per-frame quality target); None: only the budget and tolerance.
        Raises Interrupted when should_stop() turns true, OutOfMemoryError on CUDA OOM.
        Returns the (1, 3, H, W) result on the CPU; the caller's tensors are never modified.
        """
        started = time.monotonic()
        self._check_run_args(content, target, init, temporal, bounds)
        try:
            stopping = (self.style.tolerance if tolerance is None else float(tolerance),
                        self.style.tolerance_window if tolerance_window is None
                        else int(tolerance_window))
            if stopping[0] < 0 or stopping[1] < 1:
                raise ValueError(f"tolerance must be >= 0 and tolerance_window >= 1, got "
                                 f"{stopping}")
            return self._run(content, target, init, iterations, coarse_to_fine, temporal,
                             progress, should_stop, started, stopping, bounds, target_loss)
        except torch.cuda.OutOfMemoryError:
            h, w = content.shape[-2:]
            raise OutOfMemoryError(f"out of GPU memory stylizing {w}x{h}; "
                                   "retry with a smaller model.max_memory_gb (smaller tiles)"
                                   ) from None

    def _check_run_args(self, content: Tensor, target: StyleTarget, init: Tensor | None,
                        temporal: Sequence[TemporalTerm], bounds: Bounds | None) -> None:
        _check_image(content, "content")
        if bounds is not None:
            _check_image(bounds.lo, "lower bound")
            _check_image(bounds.hi, "upper bound")
        if target._owner is not self._token:
            raise ValueError("this StyleTarget was prepared by another Stylizer")
        if init is not None:
            _check_image(init, "init")
        elif self.style.init == "image":
            raise UsageError("style.init is 'image' but no start image was given; "
                             "set style.init_image")
        for term in temporal:
            _check_image(term.target, "temporal target")
            _check_image(term.mask, "temporal mask", channels=1)
        h, w = content.shape[-2:]
        for index, mask in enumerate(target.masks or ()):
            check_aspect(mask, (int(h), int(w)), index + 1)
        if min(h, w) < self.features.min_side:
            raise UsageError(f"the image is {w}x{h}; its shorter side must be at least "
                             f"{self.features.min_side} pixels for layer "
                             f"{self.features.deepest}")

    def _run(self, content: Tensor, target: StyleTarget, init: Tensor | None,
             iterations: int | None, coarse_to_fine: bool, temporal: Sequence[TemporalTerm],
             progress: Callable[[Progress], None] | None,
             should_stop: Callable[[], bool] | None, started: float,
             stopping: tuple[float, int], bounds: Bounds | None = None,
             target_loss: float | None = None) -> StylizeResult:
        content = content.detach().to(self.device, torch.float32).contiguous()
        full = (int(content.shape[-2]), int(content.shape[-1]))
        budget = self.style.iterations if iterations is None else int(iterations)
        if budget < 0:
            raise ValueError(f"iterations must be >= 0, got {budget}")
        plan = self.plan(full, budget, coarse_to_fine)
        tracker = _Tracker(sum(n for _, n in plan), len(plan), started, self.sync_every,
                           progress, should_stop, lag=self.lag, loss_scale=self.loss_scale)
        start = self._initial_image(content, init, plan[0][0])
        x, stopped_early = start, False
        for index, (size, steps) in enumerate(plan):
            if index > 0:
                x = _resize(x.clamp(0.0, 1.0), size)
            problem = self._problem(content, target, temporal, size, bounds)
            # The quality target is that of the output size: coarser scales run their budget.
            tracker.target_loss = target_loss if index == len(plan) - 1 else None
            x, stopped_early = self._optimize(problem, x, steps, index, tracker, stopping)
        image, terms = self._finish(problem, x)
        initial = tracker.first_loss if len(plan) == 1 and tracker.first_loss is not None \
            else self._total(problem, _resize(start, full))
        return StylizeResult(image=image, initial_loss=initial, final_loss=terms["total"],
                             losses=terms, iterations=tracker.done,
                             seconds=time.monotonic() - started, stopped_early=stopped_early)

    def plan(self, full: tuple[int, int], budget: int,
             coarse_to_fine: bool = True) -> list[tuple[tuple[int, int], int]]:
        """[((height, width), iterations)] from coarse to full size, as `run` will optimize
        an image of size `full` with `budget` final-scale iterations; too-small scales are
        skipped."""
        plan: list[tuple[tuple[int, int], int]] = []
        if coarse_to_fine and self.style.coarse_iterations > 0:
            for scale in self.style.scales:
                size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
                if scale >= 1.0 or size == full or max(size) < self.style.min_scale_side \
                        or min(size) < self.features.min_side or (plan and plan[-1][0] == size):
                    continue
                plan.append((size, self.style.coarse_iterations))
        plan.append((full, budget))
        return plan

    def _initial_image(self, content: Tensor, init: Tensor | None,
                       size: tuple[int, int]) -> Tensor:
        """The start image at the first scale: (1, C, h, w) on the device, a new tensor."""
        if init is not None:
            image = _resize(init.detach().to(self.device, torch.float32), size)
        elif self.style.init == "noise":
            # Drawn on the CPU from a seeded generator: the same start on every device.
            gen = torch.Generator().manual_seed(self.style.seed)
            channels = 1 if self.style.preserve_color else 3
            noise = torch.rand((1, channels, *size), generator=gen)
            return noise.to(self.device)
        else:
            image = _resize(content, size)
        image = luminance(image) if self.style.preserve_color else image
        return image.clone()

    def _optimize(self, problem: _Problem, x0: Tensor, steps: int, scale_index: int,
                  tracker: _Tracker, stopping: tuple[float, int]) -> tuple[Tensor, bool]:
        """Run up to `steps` evaluations from x0 at one scale; returns (x, stopped early).

        x is the evaluated image with the lowest objective, not the last trial point: a
        trial the line search rejects (or an Adam step that overshoots) is never returned,
        and the last trial point, not yet evaluated, is dropped rather than evaluated with
        one more forward pass. The comparison stays on the device (no host sync); it costs
        one copy of the image per evaluation. Progress reports the best image's losses.
        """
        # A contiguous copy inside the box: the caller's tensor is never changed, and any
        # layout it came in (channels_last, a transposed view) is fine.
        lo, hi = problem.bounds if problem.bounds is not None else (0.0, 1.0)
        x = x0.detach().clamp(lo, hi).contiguous().requires_grad_(True)
        optimizer = self._optimizer(x, lo, hi)
        project = not isinstance(optimizer, BoxLBFGS)  # Adam: clamp after each step
        tracker.begin_scale(scale_index, problem.size, self._term_names(problem), *stopping)
        best_x = x.detach().clone()
        best = torch.full((len(self._term_names(problem)),), math.inf, device=x.device)

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            values = self._values(problem, x)
            values[0].backward()
            with torch.no_grad():  # x is still the evaluated image
                better = values[0] < best[0]  # False for NaN
                best.copy_(torch.where(better, values.detach(), best))
                best_x.copy_(torch.where(better, x.detach(), best_x))
            return values[0]

        stopped = False
        for step in range(steps):
            tracker.check_stop()
            optimizer.step(closure)
            if project:
                with torch.no_grad():
                    x.copy_(x.clamp(lo, hi))
            if tracker.record(best.clone()):
                stopped = step + 1 < steps  # converging on the last step is not "early"
                break
        tracker.flush()  # report iterations still pending (sync_every > 1)
        return best_x if steps > 0 else x.detach(), stopped

    def _optimizer(self, x: Tensor, lo: float | Tensor = 0.0,
                   hi: float | Tensor = 1.0) -> torch.optim.Optimizer | BoxLBFGS:
        if self.style.optimizer == "adam":
            return torch.optim.Adam([x], lr=self.style.learning_rate)
        return BoxLBFGS(x, history=self.style.lbfgs_history, lo=lo, hi=hi)

    def _finish(self, problem: _Problem, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The result image (CPU, [0, 1]) and the loss terms of exactly that image.

        x is already inside [0, 1], so without preserve_color the result is x itself and
        its losses are those the last progress report gave.
        """
        with torch.no_grad():
            if self.style.preserve_color:
                rgb = _recombine(x, problem.chroma_source)
                evaluated = luminance(rgb)
            else:
                rgb = evaluated = x.clamp(0.0, 1.0)
            values = [v * self.loss_scale for v in self._values(problem, evaluated).tolist()]
        losses = dict(zip(self._term_names(problem)[2:], values[2:], strict=True))
        losses["total"] = values[1]
        return rgb.detach().to("cpu", torch.float32), losses

    def _total(self, problem: _Problem, x: Tensor) -> float:
        """'total' (content + style + tv) of image x."""
        with torch.no_grad():
            return float(self._values(problem, x)[1]) * self.loss_scale

    def evaluate(self, image: Tensor, content: Tensor, target: StyleTarget) -> dict[str, float]:
        """Weighted content/style/tv losses and their total for `image` against `content`.

        image, content (1, 3, H, W) float in [0, 1] of the same size. No temporal term.
        With preserve_color the losses are those of the luminance, as in `run`.
        """
        _check_image(image, "image")
        _check_image(content, "content")
        if image.shape != content.shape:
            raise ValueError(f"image {tuple(image.shape)} and content {tuple(content.shape)} "
                             "differ in size")
        if target._owner is not self._token:
            raise ValueError("this StyleTarget was prepared by another Stylizer")
        size = (int(image.shape[-2]), int(image.shape[-1]))
        problem = self._problem(content.detach().to(self.device, torch.float32), target, (),
                                size)
        x = image.detach().to(self.device, torch.float32)
        x = luminance(x) if self.style.preserve_color else x
        with torch.no_grad():
            values = [v * self.loss_scale for v in self._values(problem, x).tolist()]
        return {"content": values[2], "style": values[3], "tv": values[4], "total": values[1]}


def build_stylizer(model: ModelConfig, style: StyleConfig,
                   weights_override: str | None = None) -> Stylizer:
    """Resolve the device, load and check the weights, build the truncated network.

    bf16, channels_last and compile apply on CUDA only (on the CPU they are slower or
    unsupported); `weights_override` replaces model.weights (None keeps it).
    """
    device = resolve_device(model.device)
    if model.precision == "bf16" and device.type != "cuda":
        log.info("model.precision bf16 applies on CUDA only; running fp32 on %s", device)
    state = load_vgg19_state_dict(weights_override if weights_override is not None
                                  else model.weights)
    features = VGGFeatures(state, [style.content_layer, *style.style_layers],
                           pooling=model.pooling)
    del state
    return Stylizer(features, style, device, **device_options(model, device))


def device_options(model: ModelConfig, device: torch.device) -> dict[str, object]:
    """Stylizer options from the model config: the memory budget, and those that apply on
    CUDA only (slower or unsupported on the CPU): bf16 autocast, channels_last, compile."""
    on_cuda = device.type == "cuda"
    return {"precision": model.precision if on_cuda else "fp32",
            "channels_last": model.channels_last and on_cuda,
            "compile_network": model.compile and on_cuda,
            "max_memory_gb": model.max_memory_gb,
            "auto_memory_share": model.auto_memory_share}

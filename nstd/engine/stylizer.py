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
  copied to pinned memory asynchronously and read `lag` iterations later
  (`nstd.engine.tracker`).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nstd.config import ModelConfig, StyleConfig
from nstd.engine.device import device_options, resolve_device
from nstd.engine.features import VGGFeatures
from nstd.engine.masks import check_aspect
from nstd.engine.objective import Problem, StyleObjective
from nstd.engine.optim import BoxLBFGS
from nstd.engine.pixels import check_image, luminance, recombine, resize, rgb_to_yiq, yiq_to_rgb
from nstd.engine.targets import Bounds, StyleTarget, TemporalTerm
from nstd.engine.tracker import Progress, Tracker
from nstd.engine.weights import load_vgg19_state_dict
from nstd.errors import OutOfMemoryError, UsageError

__all__ = [  # the engine's public names; others import them from here
    "Bounds",
    "Progress",
    "StyleTarget",
    "StylizeResult",
    "Stylizer",
    "TemporalTerm",
    "build_stylizer",
    "device_options",
    "luminance",
    "resolve_device",
    "rgb_to_yiq",
    "yiq_to_rgb",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StylizeResult:
    image: Tensor  # (1, 3, H, W) float32 in [0, 1], on the CPU
    initial_loss: float  # 'total' of the start image at the output size
    final_loss: float  # 'total' of the returned image (temporal term excluded)
    losses: dict[str, float]  # weighted terms of the returned image, plus 'total'
    iterations: int  # optimizer iterations run, over all scales
    seconds: float
    stopped_early: bool  # the final scale ended by early stopping, before its budget


# --------------------------------------------------------------------------- the stylizer


class Stylizer(StyleObjective):
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
            `nstd.engine.tracker.Tracker`); default 2 on CUDA (no stall per iteration), 0
            elsewhere (exact).
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
        check_image(content, "content")
        if bounds is not None:
            check_image(bounds.lo, "lower bound")
            check_image(bounds.hi, "upper bound")
        if target._owner is not self._token:
            raise ValueError("this StyleTarget was prepared by another Stylizer")
        if init is not None:
            check_image(init, "init")
        elif self.style.init == "image":
            raise UsageError("style.init is 'image' but no start image was given; "
                             "set style.init_image")
        for term in temporal:
            check_image(term.target, "temporal target")
            check_image(term.mask, "temporal mask", channels=1)
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
        tracker = Tracker(sum(n for _, n in plan), len(plan), started, self.sync_every,
                           progress, should_stop, lag=self.lag, loss_scale=self.loss_scale)
        start = self._initial_image(content, init, plan[0][0])
        x, stopped_early = start, False
        for index, (size, steps) in enumerate(plan):
            if index > 0:
                x = resize(x.clamp(0.0, 1.0), size)
            problem = self._problem(content, target, temporal, size, bounds)
            # The quality target is that of the output size: coarser scales run their budget.
            tracker.target_loss = target_loss if index == len(plan) - 1 else None
            x, stopped_early = self._optimize(problem, x, steps, index, tracker, stopping)
        image, terms = self._finish(problem, x)
        initial = tracker.first_loss if len(plan) == 1 and tracker.first_loss is not None \
            else self._total(problem, resize(start, full))
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
            image = resize(init.detach().to(self.device, torch.float32), size)
        elif self.style.init == "noise":
            # Drawn on the CPU from a seeded generator: the same start on every device.
            gen = torch.Generator().manual_seed(self.style.seed)
            channels = 1 if self.style.preserve_color else 3
            noise = torch.rand((1, channels, *size), generator=gen)
            return noise.to(self.device)
        else:
            image = resize(content, size)
        image = luminance(image) if self.style.preserve_color else image
        return image.clone()

    def _optimize(self, problem: Problem, x0: Tensor, steps: int, scale_index: int,
                  tracker: Tracker, stopping: tuple[float, int]) -> tuple[Tensor, bool]:
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

    def _finish(self, problem: Problem, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The result image (CPU, [0, 1]) and the loss terms of exactly that image.

        x is already inside [0, 1], so without preserve_color the result is x itself and
        its losses are those the last progress report gave.
        """
        with torch.no_grad():
            if self.style.preserve_color:
                rgb = recombine(x, problem.chroma_source)
                evaluated = luminance(rgb)
            else:
                rgb = evaluated = x.clamp(0.0, 1.0)
            values = [v * self.loss_scale for v in self._values(problem, evaluated).tolist()]
        losses = dict(zip(self._term_names(problem)[2:], values[2:], strict=True))
        losses["total"] = values[1]
        return rgb.detach().to("cpu", torch.float32), losses

    def _total(self, problem: Problem, x: Tensor) -> float:
        """'total' (content + style + tv) of image x."""
        with torch.no_grad():
            return float(self._values(problem, x)[1]) * self.loss_scale

    def evaluate(self, image: Tensor, content: Tensor, target: StyleTarget) -> dict[str, float]:
        """Weighted content/style/tv losses and their total for `image` against `content`.

        image, content (1, 3, H, W) float in [0, 1] of the same size. No temporal term.
        With preserve_color the losses are those of the luminance, as in `run`.
        """
        check_image(image, "image")
        check_image(content, "content")
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

"""Reporting a run as it goes: progress per iteration, early stopping and stop requests,
without stalling the device (loss values are read back late and in batches)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nstd.errors import Interrupted, NstdError


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



class Tracker:
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

"""Progress reporting for people: a bar with ETA on a terminal, plain periodic lines otherwise.

journald stores lines containing carriage returns as "[blob data]", so the bar is used only
when the stream is a TTY; everywhere else one plain line is written every `interval` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands. `unit` is 'iteration' for an image, 'frame' for a video ('plan'
    during its decode pass, 'encode' once every frame is made and the encoder finishes)."""

    done: int
    total: int
    unit: str
    elapsed: float
    loss: float | None = None
    detail: str = ""
    done_this_run: int | None = None  # units of `done` worked in this run (not resumed)
    # From a cost model (`nstd.eta`): `modelled` = `remaining` is the ETA (None: unknown).
    remaining: float | None = None
    modelled: bool = False

    @property
    def eta(self) -> float | None:
        """Seconds left: the cost model's figure when there is one (None: unknown), else
        extrapolated from this run's rate (units of equal cost: the plan pass); None before
        the first unit."""
        if self.modelled:
            return self.remaining
        worked = self.done if self.done_this_run is None else self.done_this_run
        if worked <= 0 or self.total <= 0:
            return None
        return max(0.0, self.elapsed / worked * (self.total - self.done))


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `12s`, or `unknown` (None)."""
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def describe(p: JobProgress) -> str:
    """One line such as `frame 12/240 (5%), loss 3.2e+04, 1m10s elapsed, ETA 22m05s`."""
    percent = f" ({100 * p.done / p.total:.0f}%)" if p.total else ""
    loss = f", loss {p.loss:.4g}" if p.loss is not None else ""
    detail = f", {p.detail}" if p.detail else ""
    return (f"{p.unit} {p.done}/{p.total}{percent}{loss}{detail}, "
            f"{format_duration(p.elapsed)} elapsed, ETA {format_duration(p.eta)}")


class ProgressPrinter:
    """Renders `JobProgress` updates to a stream; call it as the pipeline's progress callback."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, width: int = 30) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.clock = clock
        self.width = width
        self._last = float("-inf")
        self._open_bar = False

    def __call__(self, progress: JobProgress) -> None:
        now = self.clock()
        final = progress.total > 0 and progress.done >= progress.total
        if self.tty:
            filled = int(self.width * progress.done / progress.total) if progress.total else 0
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {describe(progress)}\033[K")
            self._open_bar = True
            if final:
                self.close()
            self.stream.flush()
        elif final or now - self._last >= self.interval:
            self._last = now
            self.stream.write(describe(progress) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line so that later output starts on a fresh one."""
        if self._open_bar:
            self.stream.write("\n")
            self.stream.flush()
            self._open_bar = False

"""One daemon job's life, from its spec to the event that ends it — whoever does the work.

    run(spec, emit, should_stop, work)
        parse the job's settings
        -> verify_existing?  an earlier attempt published but did not report: check the
                             recorded output is this job's complete result, done
        -> work(config, reporter)   the local worker runs `nstd.pipeline.run_job`; the Ray
                                    driver ships units to actors (`nstd.cluster.driver`)
        -> verify the published output (a video: every frame) or delete it
        -> emit ``published`` (with a one-line summary) or ``failed`` (kind, reason)

The two runners are adapters over this module: `nstd.daemon.worker.execute` (a worker
process, or inline in tests) and `nstd.cluster.driver.run_job` (a thread of the supervisor).
Both report through one `Reporter`, so the supervisor, the ledger and the status page see the
same event stream from either. Failure kinds are those of `nstd.daemon.jobspec`.
"""

from __future__ import annotations

import errno
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nstd.config import Config, parse_config
from nstd.daemon.jobspec import JobSpec
from nstd.errors import (
    InputError,
    Interrupted,
    NstdError,
    OutOfMemoryError,
    OutputError,
    TransientError,
)
from nstd.faults import failpoint
from nstd.series import IndexedSeries, Series

log = logging.getLogger("nstd.worker")

Emit = Callable[[dict[str, Any]], None]
EVENT_SECONDS = 1.0  # progress and heartbeat events, at most this often (final ones always)


@dataclass(frozen=True)
class Done:
    """What the work reports: a one-line summary, and a video's frame count (the final check
    of the published file counts them)."""

    summary: str
    frames: int | None = None


Work = Callable[[Config, "Reporter"], Done]


class Reporter:
    """Throttled progress and heartbeat events of one job, at most about one per second
    (final ones always): the supervisor kills a worker silent for ``daemon.stall_seconds``,
    and the page and `nstd status` show the latest. Thread-safe: the Ray driver reports
    frames from the pool's threads while its own thread waits."""

    def __init__(self, job_id: int, emit: Emit, clock: Callable[[], float] = time.monotonic,
                 *, frames: int | None = None) -> None:
        self.job_id = job_id
        self.emit = emit
        self.clock = clock
        self.last = float("-inf")
        self.last_beat = float("-inf")
        self.decoding = False
        self.preview: Any = None  # nstd.daemon.preview.Preview when daemon.http is on
        # A video's frame losses so far (the page's sparkline): in order of arrival for a
        # local run, by frame position for frames that arrive out of order (`frame`).
        self.losses: Series | IndexedSeries = Series() if frames is None else \
            IndexedSeries(frames)
        self.lock = threading.RLock()
        self.total = frames or 0
        self.done = self.done_at_start = 0
        self.started = clock()

    def _due(self) -> bool:
        now = self.clock()
        if now - self.last < EVENT_SECONDS:
            return False
        self.last = now
        return True

    def heartbeat(self) -> None:
        failpoint("job.heartbeat")
        # Its own throttle, and only when nothing else went out for a second: sharing
        # `_due` with `stage` let the per-iteration heartbeats starve a video's frame events
        # (progress stayed at "starting" until the last frame).
        with self.lock:
            now = self.clock()
            if now - max(self.last, self.last_beat) >= EVENT_SECONDS:
                self.last_beat = now
                self.emit({"event": "heartbeat", "job": self.job_id})

    def stage(self, stage: str, done: int, total: int, eta: float | None = None,
              *, final: bool = False) -> None:
        with self.lock:
            if final or self._due():
                if final:
                    self.last = self.clock()
                event = {"event": "progress", "job": self.job_id, "stage": stage,
                         "done": done, "total": total, "eta": eta}
                if stage == "frame":
                    event["losses"] = [float(f"{v:.4g}") for v in self.losses.values()]
                self.emit(event)

    def packets(self, stage: str, total: int) -> Callable[[int], None]:
        """A per-packet callback (probe, output check)."""
        def report(count: int) -> None:
            self._decoding()
            self.stage(stage, count, max(count, total))
        return report

    def plan(self, count: int, total: int) -> None:
        """A frame of the plan pass decoded (`nstd.temporal.videojob.PlanProgress`)."""
        self._decoding()
        failpoint("plan.frame")
        self.heartbeat()
        self.stage("plan", count, total)

    def _decoding(self) -> None:
        if not self.decoding:
            self.decoding = True
            failpoint("worker.decode")

    def progress(self, p: Any) -> None:  # a nstd.progress.JobProgress from the engine
        if p.unit == "plan":
            self._decoding()
            failpoint("plan.frame")
        else:
            failpoint("job.progress")
            if p.unit == "frame":
                failpoint("video.frame")
                if p.loss is not None:
                    self.losses.add(p.loss)
        # The last frame, and the one "encode" event (the frames are all made, the encoder
        # finishes), always go out.
        final = (p.total > 0 and p.done >= p.total and p.unit != "plan") or p.unit == "encode"
        self.stage(p.unit, p.done, p.total, p.eta, final=final)
        if self.preview is not None and p.unit != "plan":
            self.preview.update(p.unit, p.done)

    # Frames made elsewhere (Ray actors), arriving in any order.

    def start_frames(self, total: int, done: int) -> None:
        """`total` frames, `done` of them stored before this run: "frame done/total"."""
        with self.lock:
            self.total, self.done, self.done_at_start = total, done, done
            self.losses = IndexedSeries(total)
            self.started = self.clock()
            self.tick(final=True)

    def frame(self, index: int, loss: float | None) -> None:
        """Frame `index` is stored; its loss joins the series."""
        with self.lock:
            self.done += 1
            if loss is not None:
                self.losses.add(index, loss)
            self.tick(final=self.done >= self.total)

    def tick(self, *, final: bool = False) -> None:
        """A "frame" progress event, its ETA from this run's rate so far."""
        with self.lock:
            now = self.clock()
            made = self.done - self.done_at_start
            rate = made / (now - self.started) if made and now > self.started else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else None
            self.stage("frame", self.done, self.total, eta, final=final)

    @property
    def made(self) -> int:
        """Frames made in this run (not resumed)."""
        return self.done - self.done_at_start


class NameTaken(NstdError):
    """The recorded output name holds a file that is not this job's result."""


def classify(exc: BaseException, stopping: bool) -> tuple[str, str]:
    """(kind, reason) of a job's failure; see `nstd.daemon.jobspec` for the kinds."""
    if isinstance(exc, NameTaken):
        return "name_taken", str(exc)
    if isinstance(exc, Interrupted):
        return ("stopped" if stopping else "transient"), str(exc)
    if isinstance(exc, OutOfMemoryError) or _is_cuda_oom(exc):
        text = str(exc) if isinstance(exc, OutOfMemoryError) else f"out of GPU memory ({exc})"
        return "oom", text
    if _no_space(exc):  # the job waits for room, without counting an attempt
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return "no_space", f"{text}{where}"
    if isinstance(exc, (TransientError, OutputError)):
        return "transient", str(exc)
    if isinstance(exc, InputError):
        return "input", str(exc)
    if isinstance(exc, NstdError):
        return "permanent", str(exc)
    if isinstance(exc, OSError):  # I/O trouble (a full or read-only disk...): may pass
        where = f" ({exc.filename})" if exc.filename else ""
        return "transient", f"{exc.strerror or exc}{where}"
    return "permanent", f"unexpected error: {type(exc).__name__}: {exc}"


def _no_space(exc: BaseException) -> bool:
    """ENOSPC, raised as such or as the cause of a `TransientError` (a full outbox)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(exc, oom)


def run(spec: JobSpec, emit: Emit, should_stop: Callable[[], bool], work: Work, *,
        reporter: Reporter | None = None,
        on_failed: Callable[[str], None] | None = None) -> None:
    """Run one job and report how it ended (``published`` or ``failed``); never raises
    (except BaseException such as KeyboardInterrupt). `on_failed(kind)` runs after a failure
    is reported (the local worker frees CUDA memory after an OOM)."""
    reporter = reporter or Reporter(spec.job_id, emit)
    started = time.monotonic()
    try:
        failpoint("worker.job")
        config = parse_config(spec.config)
        if spec.verify_existing:
            check_existing(spec, config, reporter)
            summary = "already published"
        else:
            done = work(config, reporter)
            verify_or_delete(spec, config, done.frames, reporter)
            summary = f"{time.monotonic() - started:.1f} s, {done.summary}"
    except Exception as exc:  # noqa: BLE001 - every failure is an event for the supervisor
        kind, reason = classify(exc, should_stop())
        log.debug("job %d failed", spec.job_id, exc_info=True)
        emit({"event": "failed", "job": spec.job_id, "kind": kind, "reason": reason})
        if on_failed is not None:
            on_failed(kind)
        return
    emit({"event": "published", "job": spec.job_id, "output": spec.output,
          "summary": summary})


def check_existing(spec: JobSpec, config: Config, reporter: Reporter) -> None:
    """An earlier attempt published and did not get to report: is the recorded output this
    job's complete result? NameTaken if not (the supervisor then picks another name)."""
    from nstd.daemon import outcome

    output = Path(spec.output)
    try:
        outcome.verify_output(output, spec.kind, config.limits, source=Path(spec.source),
                              progress=reporter.packets("verify", 0))
    except OutputError as exc:
        raise NameTaken(f"{output} is not a complete result of this job ({exc})") from None


def verify_or_delete(spec: JobSpec, config: Config, frames: int | None,
                     reporter: Reporter) -> None:
    """Check the published output (it decodes; a video has `frames` frames); a result that
    fails the check is deleted, so nothing half-right stays where a result is expected."""
    from nstd.daemon import outcome
    from nstd.media import files as fsutil

    output = Path(spec.output)
    try:
        outcome.verify_output(output, spec.kind, config.limits, expected_frames=frames,
                              source=Path(spec.source),
                              progress=reporter.packets("verify", frames or 0))
    except OutputError:
        fsutil.remove_quietly(output)
        raise

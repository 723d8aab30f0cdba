"""A worker process: loads the network once, runs one job at a time, streams events back.

    python -m nstd.daemon.worker        (started by the supervisor; never by hand)

The supervisor (`nstd.daemon.supervisor`) starts one per GPU (pinned to it through
``CUDA_VISIBLE_DEVICES``), or one on a CPU machine, and talks to it over stdin/stdout with
the line protocol of `nstd.daemon.jobspec`. This is the only place of the daemon that
imports torch: the supervisor starts in a fraction of a second and stays small, and a decoder
segfault, an OOM kill or a hung driver call here costs a worker, not the service.

A job (`execute`): check an existing output (`verify_existing`), or decide explicitly whether
a video's stored frames can be reused (their fingerprint against this job's), run
`nstd.pipeline.run_job` on the *linked* source, verify the output, report ``published``. Every
callback of the work (probe and plan passes, frames, iterations, the output check) becomes a
progress or heartbeat event, at most about one per second: the supervisor kills a worker
silent for longer than ``daemon.stall_seconds``, so nothing here beats a heartbeat from a
timer thread (that would hide a wedged main thread).

Signals: the supervisor's "stop" message, or a SIGINT/SIGTERM sent to the worker itself (a
Ctrl-C in a terminal reaches the whole process group; under systemd's KillMode=mixed only
the supervisor gets SIGTERM and sends "stop"), stops the job between frames (stored frames
kept) and ends the process; a second signal ends it at once. When the supervisor dies (its
pipe closes, or PR_SET_PDEATHSIG), the worker exits at once: a job must never run twice.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from nstd.config import Config, parse_config
from nstd.daemon.jobspec import JobSpec, decode, encode
from nstd.errors import (
    InputError,
    Interrupted,
    NstdError,
    OutOfMemoryError,
    OutputError,
    TransientError,
)
from nstd.faults import failpoint
from nstd.logs import keep_one_line
from nstd.series import Series
from nstd.signals import StopFlag
from nstd.text import plural

log = logging.getLogger("nstd.worker")

Emit = Callable[[dict[str, Any]], None]
EVENT_SECONDS = 1.0  # progress and heartbeat events, at most this often (final ones always)


class _Reporter:
    """Turns the work's callbacks into throttled events for one job."""

    def __init__(self, job_id: int, emit: Emit, clock: Callable[[], float] = time.monotonic):
        self.job_id = job_id
        self.emit = emit
        self.clock = clock
        self.last = float("-inf")
        self.last_beat = float("-inf")
        self.decoding = False
        self.preview: Any = None  # nstd.daemon.preview.Preview when daemon.http is on
        self.losses = Series()  # a video's frame losses so far (the page's sparkline)

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
        now = self.clock()
        if now - max(self.last, self.last_beat) >= EVENT_SECONDS:
            self.last_beat = now
            self.emit({"event": "heartbeat", "job": self.job_id})

    def stage(self, stage: str, done: int, total: int, eta: float | None = None,
              *, final: bool = False) -> None:
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
            if not self.decoding:
                self.decoding = True
                failpoint("worker.decode")
            self.stage(stage, count, max(count, total))
        return report

    def progress(self, p: Any) -> None:  # a nstd.progress.JobProgress
        if p.unit == "plan":
            if not self.decoding:
                self.decoding = True
                failpoint("worker.decode")
            failpoint("plan.frame")
        else:
            failpoint("job.progress")
            if p.unit == "frame":
                failpoint("video.frame")
                if p.loss is not None:
                    self.losses.add(p.loss)
        final = p.total > 0 and p.done >= p.total and p.unit != "plan"
        self.stage(p.unit, p.done, p.total, p.eta, final=final)
        if self.preview is not None and p.unit != "plan":
            self.preview.update(p.unit, p.done)


class _NameTaken(NstdError):
    """The recorded output name holds a file that is not this job's result."""


def classify(exc: BaseException, stopping: bool) -> tuple[str, str]:
    """(kind, reason) of a job's failure; see `nstd.daemon.jobspec` for the kinds."""
    if isinstance(exc, _NameTaken):
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


def execute(spec: JobSpec, engines: Any, emit: Emit, should_stop: Callable[[], bool],
            runner: Callable[..., Any] | None = None) -> None:
    """Run one job and report how it ended (``published`` or ``failed``); never raises
    (except BaseException such as KeyboardInterrupt)."""
    reporter = _Reporter(spec.job_id, emit)
    if (spec.config.get("daemon") or {}).get("http"):  # the status page shows a live preview
        from nstd.daemon.preview import Preview

        reporter.preview = Preview.for_spec(spec)
    try:
        failpoint("worker.job")
        summary = _run(spec, engines, reporter, should_stop, runner)
    except Exception as exc:  # noqa: BLE001 - every failure is an event for the supervisor
        kind, reason = classify(exc, should_stop())
        log.debug("job %d failed", spec.job_id, exc_info=True)
        emit({"event": "failed", "job": spec.job_id, "kind": kind, "reason": reason})
        if kind == "oom":
            _free_cuda()
        return
    emit({"event": "published", "job": spec.job_id, "output": spec.output,
          "summary": summary})


def _run(spec: JobSpec, engines: Any, reporter: _Reporter, should_stop: Callable[[], bool],
         runner: Callable[..., Any] | None) -> str:
    from nstd.daemon import outcome

    config = parse_config(spec.config)
    source, output = Path(spec.source), Path(spec.output)
    limits = config.limits
    if spec.verify_existing:  # published by an earlier attempt that did not get to report
        try:
            outcome.verify_output(output, spec.kind, limits, source=source,
                                  progress=reporter.packets("verify", 0))
        except OutputError as exc:
            raise _NameTaken(f"{output} is not a complete result of this job ({exc})") from None
        return "already published"
    request = _request(spec, config)
    request = dataclasses.replace(request,
                                  restart=spec.restart or _stale_frames(spec, config, reporter))
    if runner is None:
        from nstd.pipeline import run_job as runner
    started = time.monotonic()
    report = runner(request, engines.stylizer(config), progress=reporter.progress,
                    should_stop=should_stop, heartbeat=reporter.heartbeat)
    expected = (report.extra or {}).get("frames")
    try:
        outcome.verify_output(output, spec.kind, limits, expected_frames=expected,
                              source=source, progress=reporter.packets("verify", expected or 0))
    except OutputError:
        from nstd.media import files as fsutil

        fsutil.remove_quietly(output)
        raise
    return _summary(report, time.monotonic() - started)


def _request(spec: JobSpec, config: Config) -> Any:
    """The engine's `JobRequest` for a daemon job: its styles at equal weight (each in its
    own region when the job has masks)."""
    from nstd.job import JobRequest  # imports torch: only in a worker that runs a job

    return JobRequest(source=Path(spec.source), output=Path(spec.output),
                      styles=tuple(Path(s) for s in spec.styles),
                      blend=(1.0,) * len(spec.styles), config=config,
                      work_dir=Path(spec.work_dir), masks=tuple(Path(m) for m in spec.masks))


def _stale_frames(spec: JobSpec, config: Config, reporter: _Reporter) -> bool:
    """Were this video's stored frames made with other settings or input? Decided by the
    frame store's fingerprint against this job's (explicitly: nothing is inferred from an
    error). Frames that do not match are discarded by the run; matching ones are resumed."""
    if spec.kind != "video":
        return False
    from nstd.media.container import probe_video
    from nstd.temporal.frames import fingerprint, output_size
    from nstd.temporal.store import FrameStore

    stored = FrameStore.stored_fingerprint(Path(spec.work_dir))
    if stored is None:
        return False
    info = probe_video(spec.source, config.limits, progress=reporter.packets("probe", 0))
    request = _request(spec, config)
    size = output_size(info.width, info.height, config.style.max_side)
    if stored == fingerprint(request, info, size):
        return False
    log.info("%s: stored frames were made with other settings; starting over", spec.name)
    return True


def _summary(report: Any, seconds: float) -> str:
    extra = getattr(report, "extra", None) or {}
    parts = [f"{seconds:.1f} s"]
    if "frames" in extra:
        parts.append(plural(extra["frames"], "frame"))
        if extra.get("frames_resumed"):
            parts.append(f"{extra['frames_resumed']} resumed")
    else:
        parts.append(plural(report.iterations, "iteration"))
    parts.append(f"{report.width}x{report.height}")
    return ", ".join(parts)


def _free_cuda() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the process


class _Channel:
    """The worker's end of the pipe: messages in on a thread, events out under a lock."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.stopping = threading.Event()
        # "park": stop the current job between frames like a stop, but stay up (a pause).
        # Cleared here, in pipe order, by the next "job": a park sent after a job is never
        # lost, one sent before it never stops it.
        self.parking = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(inp,), name="pipe",
                                        daemon=True)
        self._thread.start()

    def _read(self, inp: BinaryIO) -> None:
        for line in inp:
            message = decode(line)
            if message is None:
                continue
            if message.get("type") == "stop":
                self.stopping.set()
            elif message.get("type") == "park":
                self.parking.set()
                continue
            elif message.get("type") == "job":
                self.parking.clear()
            self.inbox.put(message)
        # The supervisor is gone: nobody will record what this worker does. Stop now.
        os._exit(3)

    def should_stop(self) -> bool:
        """The job's stop check: a stop, or a park (the daemon paused)."""
        return self.stopping.is_set() or self.parking.is_set()

    def emit(self, message: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._out.write(encode(message))
                self._out.flush()
            except (BrokenPipeError, ValueError):
                os._exit(3)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGKILL this worker when the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(3)


def set_threads(threads: int) -> None:
    """Torch's intra-op threads (workers x threads must not exceed the cores on a CPU)."""
    import torch

    torch.set_num_threads(max(1, threads))


def main() -> int:
    _die_with_parent()
    # Keep the protocol's stdout to ourselves; fd 1 (print, C libraries) goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    name = os.environ.get("NSTD_WORKER_NAME", "worker")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[{name}]: %(message)s")
    keep_one_line()
    channel = _Channel(sys.stdin.buffer, out)
    def on_stop() -> None:
        channel.stopping.set()
        channel.inbox.put({"type": "stop"})  # wakes an idle worker

    stop = StopFlag(on_stop=on_stop, abort=lambda: os._exit(1),
                    what="stopping after the current frame")
    stop.install()
    init = channel.inbox.get()
    if init is None or init.get("type") != "init":
        return 2
    try:
        config = parse_config(init["config"])
        set_threads(int(init.get("threads") or 1))
        from nstd.daemon.engines import EngineCache

        engines = EngineCache.load(config.model)
        engines.stylizer(config)  # the default extractor (and CUDA) before "ready"
    except Exception as exc:  # noqa: BLE001 - reported; the supervisor decides
        channel.emit({"event": "fatal", "reason": f"{type(exc).__name__}: {exc}"
                      if not isinstance(exc, NstdError) else str(exc),
                      # e.g. no network for the download: a later start may succeed
                      "transient": isinstance(exc, TransientError)})
        return 2
    channel.emit({"event": "ready", "device": str(engines.device), "pid": os.getpid()})
    while not channel.stopping.is_set():
        message = channel.inbox.get()
        if message is None or message.get("type") == "stop":
            break
        if message.get("type") == "job":
            spec = JobSpec.from_dict(message["spec"])
            execute(spec, engines, channel.emit, channel.should_stop)
    return 0


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    os._exit(code)  # not sys.exit: the pipe thread may hold stdin's lock at finalization

"""A worker process: loads the network once, runs one job at a time, streams events back.

    python -m nstd.daemon.worker        (started by the supervisor; never by hand)

The supervisor (`nstd.daemon.supervisor`) starts one per GPU (pinned to it through
``CUDA_VISIBLE_DEVICES``), or one on a CPU machine, and talks to it over stdin/stdout with
the line protocol of `nstd.daemon.jobspec`. This is the only place of the daemon that
imports torch: the supervisor starts in a fraction of a second and stays small, and a decoder
segfault, an OOM kill or a hung driver call here costs a worker, not the service.

A job (`execute`) is `nstd.daemon.lifecycle.run` with `nstd.pipeline.run_job` on the *linked*
source as its work: the lifecycle checks an existing output, verifies the result and reports
how the job ended; whether a video's stored frames can be resumed is decided where the frame
store is opened (their fingerprint against this job's). Every callback of the work (probe and
plan passes, frames, iterations, the output check) becomes a progress or heartbeat event, at
most about one per second (`lifecycle.Reporter`): the supervisor kills a worker silent for
longer than ``daemon.stall_seconds``, so nothing here beats a heartbeat from a timer thread
(that would hide a wedged main thread).

Signals: the supervisor's "stop" message, or a SIGINT/SIGTERM sent to the worker itself (a
Ctrl-C in a terminal reaches the whole process group; under systemd's KillMode=mixed only
the supervisor gets SIGTERM and sends "stop"), stops the job between frames (stored frames
kept) and ends the process; a second signal ends it at once. When the supervisor dies (its
pipe closes, or PR_SET_PDEATHSIG), the worker exits at once: a job must never run twice.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from nstd.config import Config, parse_config
from nstd.daemon.jobspec import JobSpec, decode, encode
from nstd.daemon.lifecycle import Done, Reporter, run
from nstd.errors import NstdError, TransientError
from nstd.logs import keep_one_line
from nstd.signals import StopFlag
from nstd.text import plural

log = logging.getLogger("nstd.worker")

Emit = Callable[[dict[str, Any]], None]


def execute(spec: JobSpec, engines: Any, emit: Emit, should_stop: Callable[[], bool],
            runner: Callable[..., Any] | None = None) -> None:
    """Run one job in this process and report how it ended (`nstd.daemon.lifecycle.run`):
    `nstd.pipeline.run_job` (or `runner`, in tests) on the linked source, with this
    worker's cached network; never raises (except BaseException such as KeyboardInterrupt)."""
    reporter = Reporter(spec.job_id, emit)
    if (spec.config.get("daemon") or {}).get("http"):  # the status page shows a live preview
        from nstd.daemon.preview import Preview

        reporter.preview = Preview.for_spec(spec)

    def work(config: Config, reporter: Reporter) -> Done:
        run_job = runner
        if run_job is None:
            from nstd.pipeline import run_job
        report = run_job(_request(spec, config), engines.stylizer(config),
                         progress=reporter.progress, should_stop=should_stop,
                         heartbeat=reporter.heartbeat)
        return Done(_summary(report), (report.extra or {}).get("frames"))

    run(spec, emit, should_stop, work, reporter=reporter,
        on_failed=lambda kind: _free_cuda() if kind == "oom" else None)


def _request(spec: JobSpec, config: Config) -> Any:
    """The engine's `JobRequest` for a daemon job: its styles at equal weight (each in its
    own region when the job has masks). Stored frames made with other settings are replaced
    (`FrameStore.open` decides, from the fingerprint), matching ones resumed."""
    from nstd.job import JobRequest  # imports torch: only in a worker that runs a job

    return JobRequest(source=Path(spec.source), output=Path(spec.output),
                      styles=tuple(Path(s) for s in spec.styles),
                      blend=(1.0,) * len(spec.styles), config=config,
                      work_dir=Path(spec.work_dir), masks=tuple(Path(m) for m in spec.masks),
                      restart=spec.restart, replace_stale=True)


def _summary(report: Any) -> str:
    extra = getattr(report, "extra", None) or {}
    parts = []
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

"""Named failpoints for fault-injection tests. TEST-ONLY: inert unless NSTD_FAILPOINTS is set.

The daemon calls ``failpoint("publish.before_rename")`` at the points where a crash or an
I/O error matters (see the table below). Without the environment variable a call costs one
global lookup and returns; with it, the named point does what the variable says:

    NSTD_FAILPOINTS="publish.before_rename=kill"       SIGKILL this process there (kill -9)
    NSTD_FAILPOINTS="video.frame=kill@4"               ... the 4th time it is reached
    NSTD_FAILPOINTS="publish.before_rename=enospc*2"   raise ENOSPC the first 2 times only
    NSTD_FAILPOINTS="a=kill;b=erofs"                   several points (";" or ",")

``name=action[@N][*K]``: act from the N-th hit (default 1), K times (default: every time).
Actions: ``kill`` (SIGKILL, after one line on stderr naming the point), ``enospc``,
``erofs``, ``eacces``, ``eio`` (raise that OSError), ``oom`` (`nstd.errors.OutOfMemoryError`),
``cuda_oom`` (``torch.cuda.OutOfMemoryError``), ``error`` (RuntimeError), ``exit``
(``os._exit(70)``: a process that dies without cleaning up), ``segv`` (SIGSEGV, as a crashing
decoder), ``hang`` (sleep for ever: a wedged driver call), ``sleepS`` (sleep S seconds, e.g.
``sleep0.2``: a slow pass).

Points (and where they are, under nstd/):

    intake.settled         a file settled, before it is queued            daemon/supervisor.py
    ledger.claim           inside the claim transaction, before COMMIT    daemon/ledger.py
    daemon.claimed         a job was claimed, before any work             daemon/supervisor.py
    worker.job             a worker took a job, before opening its file   daemon/worker.py
    worker.decode          the worker's first progress from decoding      daemon/worker.py
                           (probe or plan pass): "while decoding it"
    plan.frame             each frame of the plan pass                    daemon/worker.py
    job.heartbeat          the engine's heartbeat (inside Stylizer.run)   daemon/worker.py
    job.progress           every progress report (iterations, frames)     daemon/worker.py
    video.frame            a video frame was made and handed on to be     daemon/worker.py
                           stored and encoded (behind the engine)
    publish.before_rename  output fsynced under its temp name             media/files.py
    publish.after_link     final name linked, temp name not yet removed   media/files.py
    daemon.completed       ledger says done, source not yet moved         daemon/supervisor.py
    outcome.sidecar_moved  sidecar moved to done/ or failed/, source not  daemon/outcome.py
    daemon.failed_marked   ledger says failed, source not yet moved       daemon/supervisor.py
    daemon.worker_died     the supervisor found a worker dead             daemon/supervisor.py
    daemon.link            a claimed source is about to be linked         daemon/supervisor.py

Workers inherit NSTD_FAILPOINTS (a poison file kills every worker that touches it); with
NSTD_FAILPOINTS_WORKERS=first only a worker's first process is armed (its restart runs clean).

Tests in the same process use `configure` (and `configure(None)` to reset).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import dataclass

ENV = "NSTD_FAILPOINTS"

_ERRNO = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eacces": errno.EACCES,
          "eio": errno.EIO}
ACTIONS = frozenset({"kill", "oom", "cuda_oom", "error", "exit", "segv", "hang", *_ERRNO})


@dataclass
class _Point:
    action: str
    start: int = 1  # act from this hit on
    times: int | None = None  # act this many times (None: always)
    hits: int = 0


_points: dict[str, _Point] | None = None
_lock = threading.Lock()


def parse(spec: str) -> dict[str, _Point]:
    """``"a=kill@3;b=enospc*2"`` -> points. ValueError naming the bad entry."""
    points: dict[str, _Point] = {}
    for entry in spec.replace(",", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        action, times, start = rest.strip(), None, 1
        try:
            if "*" in action:
                action, count = action.split("*", 1)
                times = int(count)
            if "@" in action:
                action, nth = action.split("@", 1)
                start = int(nth)
        except ValueError:
            raise ValueError(f"{ENV}: bad count in {entry!r}") from None
        if not sep or not name.strip() or not _known(action):
            raise ValueError(f"{ENV}: {entry!r} is not name=action[@N][*K] with an action in "
                             f"{', '.join(sorted(ACTIONS))}")
        points[name.strip()] = _Point(action, start, times)
    return points


def _known(action: str) -> bool:
    if action.startswith("sleep"):
        try:
            return float(action[5:]) >= 0
        except ValueError:
            return False
    return action in ACTIONS


def configure(spec: str | None) -> None:
    """Arm the failpoints in ``spec`` (replacing any), or disarm all with None / ""."""
    global _points
    _points = (parse(spec) or None) if spec else None


def failpoint(name: str) -> None:
    """Do what NSTD_FAILPOINTS says for ``name``; nothing at all when it is not set."""
    if _points is None:
        return
    _fire(name)


def _fire(name: str) -> None:
    points = _points
    point = points.get(name) if points else None
    if point is None:
        return
    with _lock:
        point.hits += 1
        due = point.hits >= point.start and (
            point.times is None or point.hits < point.start + point.times)
    if not due:
        return
    if point.action == "kill":
        os.write(2, f"failpoint {name}: kill\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
    if point.action == "exit":
        os.write(2, f"failpoint {name}: exit\n".encode())
        os._exit(70)
    if point.action == "segv":
        os.write(2, f"failpoint {name}: segv\n".encode())
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSEGV)
    if point.action == "hang":
        os.write(2, f"failpoint {name}: hang\n".encode())
        while True:
            time.sleep(3600)
    if point.action.startswith("sleep"):
        time.sleep(float(point.action[5:]))
        return
    if point.action in _ERRNO:
        code = _ERRNO[point.action]
        raise OSError(code, f"{os.strerror(code)} [failpoint {name}]")
    if point.action == "oom":
        from nstd.errors import OutOfMemoryError

        raise OutOfMemoryError(f"out of GPU memory [failpoint {name}]")
    if point.action == "cuda_oom":
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory [failpoint {name}]")
    raise RuntimeError(f"failpoint {name}")


configure(os.environ.get(ENV))

"""The supervisor's side of its workers: how many, on which device, and the process handle.

Nothing here imports torch: devices are counted from ``CUDA_VISIBLE_DEVICES``,
``/proc/driver/nvidia/gpus`` or ``nvidia-smi -L``, and each worker is a
``python -m nstd.daemon.worker`` child talking JSON lines over its stdin/stdout
(`nstd.daemon.jobspec`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nstd.config import Config, to_mapping
from nstd.daemon.jobspec import decode, encode

log = logging.getLogger("nstd.daemon")

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The CUDA devices a worker could be pinned to, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none); else one per entry of
    ``/proc/driver/nvidia/gpus``; else one per ``GPU`` line of ``nvidia-smi -L``; else none.
    """
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        return [] if not entries or entries[0].startswith("-") else entries
    try:
        count = len([p for p in NVIDIA_PROC.iterdir() if p.is_dir()])
    except OSError:
        count = 0
    if count == 0 and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


@dataclass(frozen=True)
class WorkerPlan:
    """One worker: the ``CUDA_VISIBLE_DEVICES`` it is pinned to (None: not pinned) and its
    torch threads."""

    device: str | None
    threads: int


def plan_workers(config: Config, environ: Mapping[str, str] = os.environ,
                 cores: int | None = None) -> list[WorkerPlan]:
    """``daemon.workers`` made concrete.

    auto: one per visible CUDA device (each pinned to it), 1 on a CPU machine or when
    ``model.device`` is ``cpu`` or names one device (``cuda:N``). A number N: N workers,
    spread over the visible devices in turn. Threads: the cores shared out, at least 1 (on a
    CPU, workers x threads above the cores makes every iteration many times slower), capped
    by ``OMP_NUM_THREADS`` when that is set.
    """
    device = config.model.device
    gpus = [] if device == "cpu" or device.startswith("cuda:") else visible_gpus(environ)
    setting = config.daemon.workers
    count = (len(gpus) or 1) if setting == "auto" else int(setting)
    cores = cores or os.cpu_count() or 1
    threads = max(1, cores // count)
    try:  # an explicit OMP_NUM_THREADS (e.g. a machine shared with other work) caps it
        threads = min(threads, max(1, int(environ.get("OMP_NUM_THREADS", ""))))
    except ValueError:
        pass
    return [WorkerPlan(gpus[i % len(gpus)] if gpus else None, threads) for i in range(count)]


def describe_exit(returncode: int) -> str:
    """``signal 9 (SIGKILL)`` or ``exit status 70``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"signal {-returncode} ({name})"
    return f"exit status {returncode}"


class WorkerProcess:
    """One ``python -m nstd.daemon.worker`` child. Its messages go to ``deliver`` from a
    reader thread (None once its stdout closes); `send` never blocks for long and never
    raises (a dead worker is found by `poll`)."""

    def __init__(self, name: str, plan: WorkerPlan, config: Config,
                 deliver: Callable[[dict[str, Any] | None], None],
                 environ: Mapping[str, str] = os.environ, first: bool = True) -> None:
        env = dict(environ)
        if not first and env.get("NSTD_FAILPOINTS_WORKERS") == "first":
            env.pop("NSTD_FAILPOINTS", None)  # tests: only a worker's first process is armed
        env.update({"NSTD_WORKER_NAME": name, "OMP_NUM_THREADS": str(plan.threads),
                    "PYTHONUNBUFFERED": "1"})
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        mapping = to_mapping(config)
        if plan.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = plan.device
            if mapping["model"]["device"] == "auto":
                mapping["model"]["device"] = "cuda"
        self.proc = subprocess.Popen([sys.executable, "-m", "nstd.daemon.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.pid = self.proc.pid
        self._lock = threading.Lock()
        self._deliver = deliver
        threading.Thread(target=self._read, name=f"{name}-pipe", daemon=True).start()
        self.send({"type": "init", "config": mapping, "threads": plan.threads})

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = decode(line)
            if message is not None:
                self._deliver(message)
        self._deliver(None)

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(encode(message))
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # it died: poll() tells

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass


class ProcessBackend:
    """The supervisor's `nstd.daemon.backend.Backend`: `WorkerProcess`es."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def plans(self) -> list[WorkerPlan] | None:
        """None: the supervisor plans the workers from the config (`plan_workers`)."""
        return None

    def close(self) -> None:
        """Nothing to release: each process ended with its stop message."""

    def spawn(self, index: int, plan: WorkerPlan,
              deliver: Callable[[dict[str, Any] | None], None], *,
              first: bool = True) -> WorkerProcess:
        return WorkerProcess(f"worker{index + 1}", plan, self.config, deliver, first=first)

"""Workers inside the supervisor's own process, for the unit tests that step it by hand.

A job sent to an `InlineWorker` runs at once, synchronously, and its events are delivered
before `send` returns, so a test sees the whole job in one `Supervisor.step`. The product
path is `nstd.daemon.pool.WorkerProcess`; both implement `nstd.daemon.backend.WorkerHandle`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from nstd.daemon.jobspec import JobSpec
from nstd.daemon.pool import WorkerPlan
from nstd.daemon.worker import Emit, execute


class InlineWorker:
    """One in-process worker place: "ready" at once, a job run inside `send`."""

    def __init__(self, deliver: Emit, engines: Any, runner: Callable[..., Any] | None,
                 should_stop: Callable[[], bool]) -> None:
        self._deliver = deliver
        self._engines = engines
        self._runner = runner
        self._should_stop = should_stop
        self.pid: int | None = os.getpid()
        self.returncode: int | None = None
        deliver({"event": "ready", "device": "inline", "pid": self.pid})

    def send(self, message: dict[str, Any]) -> None:
        if message.get("type") == "job":
            execute(JobSpec.from_dict(message["spec"]), self._engines, self._deliver,
                    self._should_stop, self._runner)
        elif message.get("type") == "stop":
            self.returncode = 0

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Nothing to wait for: a job ended inside `send`."""
        return self.returncode

    def kill(self) -> None:
        self.returncode = -signal.SIGKILL


class InlineBackend:
    """The supervisor's `nstd.daemon.backend.Backend` for unit tests: `InlineWorker`s."""

    def __init__(self, engines: Any, runner: Callable[..., Any] | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.engines = engines
        self.runner = runner
        self.should_stop = should_stop

    def plans(self) -> list[WorkerPlan] | None:
        """None: planned from the config, as for worker processes."""
        return None

    def spawn(self, index: int, plan: WorkerPlan, deliver: Emit, *,
              first: bool = True) -> InlineWorker:
        return InlineWorker(deliver, self.engines, self.runner, self.should_stop)

    def close(self) -> None:
        """Nothing to release."""

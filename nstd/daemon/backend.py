"""What the supervisor needs from whatever runs its jobs: a `Backend` and its `WorkerHandle`s.

Three backends implement it: worker processes (`nstd.daemon.pool.ProcessBackend`, the
product path), in-process workers for unit tests (`nstd.daemon.inline.InlineBackend`) and
places on a Ray actor pool (`nstd.cluster.backend.RayBackend`). Each implements every method
(a no-op, or None, where it has nothing to do), so the supervisor calls them directly instead
of probing for what is there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from nstd.daemon.pool import WorkerPlan

Deliver = Callable[[dict[str, Any] | None], None]  # a worker's message; None: it closed


class WorkerHandle(Protocol):
    """One worker place: it runs the jobs it is sent, and its events go to its ``deliver``."""

    pid: int | None

    def send(self, message: dict[str, Any]) -> None:
        """A "job", "park" or "stop" message (`nstd.daemon.jobspec`); never raises."""

    def poll(self) -> int | None:
        """Its exit status once it ended (negative: the signal), else None."""

    def wait(self, timeout: float) -> int | None:
        """`poll`, after waiting up to ``timeout`` seconds for it to end."""

    def kill(self) -> None:
        """End it now (it stalled, or it did not stop in time)."""


class Backend(Protocol):
    """Starts the supervisor's workers."""

    def plans(self) -> list[WorkerPlan] | None:
        """Its own worker places (a cluster knows its actors); None: `plan_workers`."""

    def spawn(self, index: int, plan: WorkerPlan, deliver: Deliver, *,
              first: bool = True) -> WorkerHandle:
        """Start worker ``index`` (``first``: its first process since the daemon started)."""

    def close(self) -> None:
        """Release what the backend holds, once every worker has stopped."""

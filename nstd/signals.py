"""The stop flag that SIGINT/SIGTERM set, shared by `nstd stylize`, the supervisor and its
worker processes.

It lives at the bottom of the layers because the worker processes (daemon) install it as much
as the CLI does, and a daemon module must not reach up into the CLI for it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """The one SIGINT/SIGTERM design, for `nstd stylize`, the supervisor and its workers.

    The first signal sets the flag (work polls it and stops at the next safe point: between
    frames of a video, whose stored frames are kept; an image is abandoned) and calls
    ``on_stop`` (the supervisor wakes its loop and tells its workers); a second one calls
    ``abort`` (default: raise KeyboardInterrupt; the daemon exits at once, as everything it
    writes is crash-safe). Handlers only set a flag and call those two: nothing else runs in
    signal context.
    """

    def __init__(self, *, on_stop: Callable[[], None] | None = None,
                 abort: Callable[[], None] | None = None,
                 what: str = "stopping at the next safe point") -> None:
        self._event = threading.Event()
        self._on_stop = on_stop
        self._abort = abort
        self._what = what
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        if self._on_stop is not None:
            self._on_stop()

    def handle(self, signum: int, _frame: Any = None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            log.warning("%s again: aborting", name)
            if self._abort is None:
                raise KeyboardInterrupt
            self._abort()
            return
        log.warning("%s received: %s (again to abort)", name, self._what)
        self.set()

    def install(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self.handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

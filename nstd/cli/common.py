"""What every sub-command shares: the config from the command line, logging, and the stop flag
that SIGINT/SIGTERM set."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nstd.config import Config, Override, load_config

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


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: list[Override] = list(args.overrides)
    if getattr(args, "weights", None):
        overrides.append((f"model.weights={json.dumps(str(Path(args.weights).absolute()))}",
                          f"--weights {args.weights}"))
    if getattr(args, "device", None):
        overrides.append((f"model.device={args.device}", f"--device {args.device}"))
    return load_config(args.config, overrides)


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

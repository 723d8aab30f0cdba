"""What every sub-command shares: the config from the command line, logging, and the stop flag
that SIGINT/SIGTERM set."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from nstd.config import Config, load_config

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGINT/SIGTERM: the first signal asks work to stop at the next safe point,
    a second one aborts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self._event.is_set():
                raise KeyboardInterrupt
            log.warning("%s received: stopping at the next safe point (again to abort)",
                        signal.Signals(signum).name)
            self._event.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "weights", None):
        overrides.append(f"model.weights={json.dumps(str(Path(args.weights).absolute()))}")
    if getattr(args, "device", None):
        overrides.append(f"model.device={args.device}")
    return load_config(args.config, overrides)


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

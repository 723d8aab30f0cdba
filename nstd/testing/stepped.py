"""A supervisor stepped by hand, for fast tests: a fake clock, an in-process worker, no torch.

    rig = SteppedSite(tmp_path, active_hours="22:00-07:00")
    rig.clock.t = local_time(2026, 1, 1, 23, 0)
    rig.start(); rig.drop("a.png"); rig.step(); rig.step(rig.settle + 0.01)

The worker is `nstd.daemon.inline.InlineBackend` with a stand-in for `run_job` that writes a
small image (or first does ``rig.action(request, kwargs)``). Same idea as tests/test_daemon.py's
rig, shared by tests/test_schedule.py and tests/test_hooks.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from watchdog.events import FileCreatedEvent

from nstd.config import Config, parse_config
from nstd.daemon.inline import InlineBackend
from nstd.daemon.ledger import Ledger, ledger_path
from nstd.daemon.pool import WorkerPlan
from nstd.daemon.startup import check_folders
from nstd.daemon.supervisor import Supervisor
from nstd.testing.media import write_test_image


def local_time(*parts: int) -> float:
    """Epoch seconds of a naive local wall-clock time (what active_hours speaks)."""
    return datetime(*parts).timestamp()  # type: ignore[arg-type]


class Clock:
    """A settable clock for the supervisor's ``clock``/``monotonic``."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeEngines:
    """An `EngineCache` stand-in for runners that never touch the stylizer."""

    def stylizer(self, config: Config) -> object:
        return object()


class SteppedSite:
    """Folders under ``root``, a supervisor on them; ``daemon`` keys override the config.
    ``free_space``: the supervisor's free-space function (default: the real one)."""

    settle = 1.0

    def __init__(self, root: Path, free_space: Callable[[Path], int] | None = None,
                 **daemon: Any) -> None:
        self.root = root
        self.free_space = free_space
        (root / "styles").mkdir(exist_ok=True)
        write_test_image(root / "styles" / "mosaic.png", size=(16, 16), seed=1)
        settings = {"settle_seconds": self.settle, "rescan_seconds": 600.0, "max_attempts": 3,
                    "retry_backoff_seconds": 10.0, **daemon}
        self.mapping = {"daemon": settings, "style": {"max_side": 32}}
        self.config = parse_config(self.mapping, base_dir=root)
        check_folders(self.config)
        self.inbox = Path(self.config.daemon.inbox)
        self.outbox = Path(self.config.daemon.outbox)
        self.state = Path(self.config.daemon.state)
        self.clock = Clock(local_time(2026, 1, 1, 12, 0))
        self.action: Callable[[Any, dict[str, Any]], None] | None = None
        self.ran: list[str] = []

        def runner(request: Any, stylizer: object, **kwargs: Any) -> Any:
            self.ran.append(request.source.name)
            if self.action is not None:
                self.action(request, kwargs)
            return grey_image_result(request.output)

        self.runner = runner
        self.ledger = Ledger.open(ledger_path(self.config.daemon.state))
        self.daemon = self.new_daemon()

    def new_daemon(self) -> Supervisor:
        backend = InlineBackend(FakeEngines(), self.runner, lambda: self.daemon.stop_requested)
        extra = {} if self.free_space is None else {"free_space": self.free_space}
        return Supervisor(self.config, self.ledger, backend=backend,
                          plans=[WorkerPlan(None, 1)], clock=self.clock,
                          monotonic=self.clock, watch=False, **extra)

    def start(self) -> None:
        self.daemon.start(self.clock.t)

    def step(self, advance: float = 0.0) -> bool:
        self.clock.t += advance
        return self.daemon.step(self.clock.t)

    def drop(self, rel: str, seed: int = 0) -> Path:
        path = self.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_test_image(path, size=(24, 16), seed=seed)
        self.daemon.handler.dispatch(FileCreatedEvent(str(path)))
        return path

    def queue_files(self, *names: str) -> None:
        """Drop ``names`` and let them settle into the queue (one step each way)."""
        for i, name in enumerate(names):
            self.drop(name, seed=i)
        self.step()
        self.step(self.settle + 0.01)

    def config_file(self) -> Path:
        """This site's config as a file, for `nstd.cli.main.main([... "--config", path])`."""
        path = self.root / "config.json.yaml"
        path.write_text(json.dumps(self.mapping))
        return path


def grey_image_result(output: Path) -> Any:
    """What a fake `run_job` does for an image: an 8x8 grey image at ``output`` and its
    `JobReport` (the stand-in of this rig, tests/test_daemon.py's and tests/test_faults.py's)."""
    from nstd.job import JobReport
    from nstd.media.images import write_image

    write_image(output, np.full((8, 8, 3), 0.5, np.float32))
    return JobReport(kind="image", output=output, seconds=0.1, iterations=2, initial_loss=2.0,
                     final_loss=1.0, losses={}, width=8, height=8, device="cpu")

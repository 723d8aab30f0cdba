"""A supervisor stepped by hand, for fast tests: a fake clock, an in-process worker, no torch.

    rig = SteppedSite(tmp_path, active_hours="22:00-07:00")
    rig.clock.t = local_time(2026, 1, 1, 23, 0)
    rig.start(); rig.drop("a.png"); rig.step(); rig.settle()

The worker is `nstd.daemon.inline.InlineBackend` with a `Runner` standing in for `run_job`: it
records each request and writes a small grey image (or first does ``rig.runner.action(request,
kwargs)``, which may raise what a test needs). ``real=True`` runs the real `run_job` instead
(give real ``engines`` then), and ``backend`` replaces the in-process worker altogether. Time
moves only when a test moves ``rig.clock``; watchdog events are built by hand and handed to the
supervisor's handler, as inotify would. `nstd.testing.site` is the same site run as a real
`nstd run` subprocess.
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
from nstd.daemon.ledger import Job, Ledger, ledger_path
from nstd.daemon.notify import SystemdNotifier
from nstd.daemon.pool import WorkerPlan
from nstd.daemon.startup import check_folders
from nstd.daemon.supervisor import Supervisor
from nstd.job import JobReport, JobRequest
from nstd.progress import JobProgress
from nstd.testing.media import write_test_image

SETTLE = 2.0  # daemon.settle_seconds unless a test overrides it
RESCAN = 60.0  # daemon.rescan_seconds unless a test overrides it


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
    """An `EngineCache` stand-in for runners that never touch the stylizer; it records the
    configs it was asked for."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def stylizer(self, config: Config) -> object:
        self.configs.append(config)
        return object()


class RecordingNotifier(SystemdNotifier):
    """Keeps what would go to systemd's socket (READY=1, STATUS=..., WATCHDOG=1) in ``sent``."""

    def __init__(self) -> None:
        super().__init__("\0test")
        self.sent: list[str] = []

    def send(self, *lines: str) -> bool:
        self.sent.extend(lines)
        return True


class Runner:
    """Stands in for `nstd.pipeline.run_job`: records each request, beats and reports progress
    once (as a real job does), does ``action`` if set, then writes a grey image."""

    def __init__(self) -> None:
        self.requests: list[JobRequest] = []
        self.action: Callable[[JobRequest, dict[str, Any]], None] | None = None

    def __call__(self, request: JobRequest, stylizer: object, **kwargs: Any) -> JobReport:
        self.requests.append(request)
        kwargs["heartbeat"]()
        kwargs["progress"](JobProgress(done=1, total=2, unit="iteration", elapsed=0.1))
        if self.action is not None:
            self.action(request, kwargs)
        return grey_image_result(request.output)


class SteppedSite:
    """Folders under ``root`` (``root/styles/mosaic.png`` written unless there) and a supervisor
    on them; ``daemon`` keys override the config's daemon section. ``free_space``: the
    supervisor's free-space function (default: the real one)."""

    def __init__(self, root: Path, *, clock: float | None = None, engines: Any = None,
                 real: bool = False, backend: Any = None,
                 free_space: Callable[[Path], int] | None = None, **daemon: Any) -> None:
        self.root = root
        self.free_space = free_space
        (root / "styles").mkdir(exist_ok=True)
        if not (root / "styles" / "mosaic.png").exists():
            write_test_image(root / "styles" / "mosaic.png", size=(16, 16), seed=1)
        settings = {"settle_seconds": SETTLE, "rescan_seconds": RESCAN, "max_attempts": 3,
                    "retry_backoff_seconds": 10.0, **daemon}
        self.mapping = {"daemon": settings,
                        "style": {"max_side": 32, "iterations": 2, "coarse_iterations": 1,
                                  "min_scale_side": 16}}
        self.config = parse_config(self.mapping, base_dir=root)
        check_folders(self.config)
        d = self.config.daemon
        self.settle_seconds = d.settle_seconds
        self.inbox, self.outbox, self.work = Path(d.inbox), Path(d.outbox), Path(d.work)
        self.failed, self.done, self.state = Path(d.failed), Path(d.done), Path(d.state)
        self.clock = Clock(local_time(2026, 1, 1, 12, 0) if clock is None else clock)
        self.runner: Runner | None = None if real else Runner()
        self.engines = engines if engines is not None else FakeEngines()
        self.backend = backend
        self.notifier = RecordingNotifier()
        self.ledger = Ledger.open(ledger_path(d.state))
        self.daemon = self.new_daemon()

    @property
    def ran(self) -> list[str]:
        """The file names the runner was given, in order."""
        return [] if self.runner is None else [r.source.name for r in self.runner.requests]

    def new_daemon(self) -> Supervisor:
        """A new supervisor on this site's folders and ledger (not started)."""
        backend = self.backend or InlineBackend(self.engines, self.runner,
                                                lambda: self.daemon.stop_requested)
        extra = {} if self.free_space is None else {"free_space": self.free_space}
        return Supervisor(self.config, self.ledger, self.notifier, backend=backend,
                          plans=[WorkerPlan(None, 1)], clock=self.clock, monotonic=self.clock,
                          watch=False, **extra)

    def restart(self, *, ledger: bool = False) -> None:
        """A new supervisor and runner on the same folders, started (with ``ledger``, on a
        reopened ledger): what a restart after a stop or a crash finds."""
        if ledger:
            self.ledger.close()
            self.ledger = Ledger.open(ledger_path(self.config.daemon.state))
        if self.runner is not None:
            self.runner = Runner()
        self.daemon = self.new_daemon()
        self.start()

    def start(self) -> None:
        self.daemon.start(self.clock.t)

    def step(self, advance: float = 0.0) -> bool:
        """Move the clock by ``advance`` seconds, then one supervisor step (True: it did
        something)."""
        self.clock.t += advance
        return self.daemon.step(self.clock.t)

    def settle(self) -> bool:
        """Let everything noticed settle, then take one step."""
        return self.step(self.settle_seconds + 0.01)

    def drop(self, rel: str, seed: int = 0, size: tuple[int, int] = (24, 16)) -> Path:
        """Write a test image at ``inbox/rel`` and tell the supervisor, as inotify would."""
        path = self.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_test_image(path, size=size, seed=seed)
        self.daemon.handler.dispatch(FileCreatedEvent(str(path)))
        return path

    def queue_files(self, *names: str) -> None:
        """Drop ``names`` and let them settle into the queue (one step each way)."""
        for i, name in enumerate(names):
            self.drop(name, seed=i)
        self.step()
        self.settle()

    def job(self, source: str) -> Job | None:
        """The ledger's newest job for ``source`` (relative to the inbox)."""
        return self.ledger.find(source)

    def jobs(self) -> list[Job]:
        """The ledger's active and recent jobs."""
        return self.ledger.active() + self.ledger.recent(100)

    def config_file(self) -> Path:
        """This site's config as a file, for `nstd.cli.main.main([... "--config", path])`."""
        path = self.root / "config.json.yaml"
        path.write_text(json.dumps(self.mapping))
        return path


def grey_image_result(output: Path) -> JobReport:
    """What a fake `run_job` does for an image: an 8x8 grey image at ``output`` and its
    `JobReport`."""
    from nstd.media.images import write_image

    write_image(output, np.full((8, 8, 3), 0.5, np.float32))
    return JobReport(kind="image", output=output, seconds=0.1, iterations=2, initial_loss=2.0,
                     final_loss=1.0, losses={}, width=8, height=8, device="cpu")

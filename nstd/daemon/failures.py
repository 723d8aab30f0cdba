"""What a failed attempt does to a job: retry with backoff, shrink the memory budget, hold an
unreadable file for a while, or fail the job for good and move its source to failed/.

`TransientError` (and `OutputError` or an `OSError`: the outbox may be full or read-only for
a while) is retried with backoff up to `daemon.max_attempts`; `OutOfMemoryError` is retried
with half the memory budget (`model.max_memory_gb`, or `model.auto_memory_share` when it is
auto), so the engine uses smaller tiles; the output keeps its size (the user's choice) and a
video its stored frames; every other error fails the job at once: its source goes to failed/
with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nstd.config import Config
from nstd.daemon import outcome
from nstd.daemon.hooks import Event, Hooks
from nstd.daemon.inbox import Inbox
from nstd.daemon.intake import job_config
from nstd.daemon.jobspec import INPUT_FOLDER
from nstd.daemon.ledger import Job, Ledger
from nstd.errors import ConfigError
from nstd.faults import failpoint
from nstd.progress import format_duration
from nstd.text import plural

log = logging.getLogger("nstd.daemon.supervisor")

OOM_SHRINK = 0.5  # next attempt's memory budget after running out of memory (smaller tiles)
MIN_MEMORY_GB, MIN_MEMORY_SHARE = 0.01, 0.01  # config minimums: below them the job fails
# A file that failed as unreadable/truncated stays in the inbox this many settle times; moved
# to failed/ only if unchanged by then (a copy that paused is not a broken file).
INPUT_HOLD_SETTLES = 3


class Failures:
    """Records failed attempts in the ledger and moves what failed for good. ``clock`` gives
    ledger time (epoch seconds), ``monotonic`` the inbox's."""

    def __init__(self, config: Config, ledger: Ledger, inbox: Inbox, hooks: Hooks, *,
                 clock: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self.config = config
        self.ledger = ledger
        self.inbox = inbox
        self.hooks = hooks
        self.work = Path(config.daemon.work)
        self._clock = clock
        self._mono = monotonic

    def _config_of(self, settings: dict[str, Any]) -> Config:
        try:
            return job_config(self.config, settings, self.inbox.path)
        except ConfigError:
            return self.config

    def unreadable(self, job: Job, reason: str, now: float, mono: float) -> None:
        """The worker read the file as truncated or corrupt. Changed since: a copy still in
        progress, taken again once it settles; else the job fails (the file is held)."""
        path = self.inbox.path / job.source
        if outcome.source_changed(path, job.content_key) is None:
            self.fail(job, reason, now, permanent=True, hold=True)
            return
        self.ledger.forget(job.id)
        self.inbox.forget(path)
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        log.warning("%s changed while it was read (%s): a copy still in progress? "
                    "It is taken again once it settles", job.source, reason)
        self.inbox.tracker.observe(path, mono)

    def shrink(self, job: Job, reason: str) -> None:
        """Out of memory: the next attempt gets half the memory budget (or the job fails
        when the budget is already the smallest)."""
        current = self.ledger.get(job.id) or job
        model = self._config_of(current.settings).model
        # Never a smaller output: the size is the user's choice. A smaller budget makes the
        # engine evaluate the image by smaller tiles (nstd.engine.tiled), with the same
        # result, so a video's stored frames stay valid too.
        if model.max_memory_gb == "auto":
            key, old, floor = "auto_memory_share", model.auto_memory_share, MIN_MEMORY_SHARE
        else:
            key, old, floor = "max_memory_gb", float(model.max_memory_gb), MIN_MEMORY_GB
        new = round(old * OOM_SHRINK, 4)
        if new < floor:
            self.fail(job, f"{reason} (already at the smallest memory budget)", self._clock(),
                      permanent=True)
            return
        settings = dict(current.settings)
        settings["model"] = {**dict(settings.get("model") or {}), key: new}
        self.ledger.set_settings(job.id, settings)
        log.warning("%s: out of memory with model.%s %s; the next attempt uses %s (smaller "
                    "tiles, same output size)", job.source, key, old, new)
        self.fail(job, reason, self._clock(), permanent=False)

    def fail(self, job: Job, reason: str, now: float, *, permanent: bool,
             settings: dict[str, Any] | None = None, hold: bool = False,
             refused: bool = False) -> None:
        """Record a failed attempt; when the job is failed for good, move its source to
        failed/ (``hold``: not yet; the file is looked at again after a while, and moved
        then only if it has not changed: a copy that paused is not a broken file).
        ``refused``: at intake, before any attempt (logged as such)."""
        d = self.config.daemon
        # The linked source goes first (it is taken again at the next claim): unlinking it
        # changes the source's ctime, which must stay older than the failure's time (see
        # untouched_since).
        shutil.rmtree(self.work / str(job.id) / INPUT_FOLDER, ignore_errors=True)
        now = max(now, self._clock())
        current = self.ledger.get(job.id)
        if current is not None and current.output and not os.path.lexists(current.output):
            self.ledger.set_output(job.id, None)  # nothing was published under that name
        try:
            updated = self.ledger.fail(job.id, reason, now, permanent=permanent,
                                       max_attempts=d.max_attempts,
                                       backoff_seconds=d.retry_backoff_seconds)
        except sqlite3.Error:
            log.warning("%s failed (%s), and the ledger cannot record it", job.source, reason)
            raise
        if updated.state == "queued":
            log.warning("attempt %d of %s failed: %s; retrying in %s", updated.attempts,
                        job.source, reason, format_duration(updated.not_before - now))
            return
        if refused:
            log.error("refused %s: %s", job.source, reason)
        else:
            log.error("failed %s after %s: %s", job.source,
                      plural(updated.attempts, "attempt"), reason)
        if not hold:  # a held file is announced once it goes to failed/ (see rechecks)
            self.announce(updated, now)
        failpoint("daemon.failed_marked")
        path = self.inbox.path / job.source
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        if hold:  # still known: a rescan must not notice it (and log it) again meanwhile
            self.inbox.hold(self._mono() + INPUT_HOLD_SETTLES * d.settle_seconds, path, job.id)
            return
        self._move(job, updated, path, reason, settings, now)

    def _move(self, job: Job, updated: Job, path: Path, reason: str,
              settings: dict[str, Any] | None, now: float) -> None:
        used = updated.settings if settings is None else settings
        try:
            moved = outcome.fail_source(path, updated, reason, self._config_of(used), used, now)
        except OSError as exc:
            log.error("could not move %s to %s: %s", path, self.config.daemon.failed,
                      exc.strerror or exc)
            moved = None
        if moved is not None:
            log.info("%s: moved to %s", job.source, moved)
            self.inbox.forget(path)

    def finish_failed(self, job: Job, path: Path, now: float, *, said: bool = False) -> None:
        """The job failed but its source is still here, untouched since: we were killed
        between marking it failed and moving it, or (``said``: its failure is in the log
        already) it was held for a while in case it was a copy still in progress. Finish
        that move now."""
        reason = job.error or "failed"
        moved = outcome.fail_source(path, job, reason, self._config_of(job.settings),
                                    job.settings, job.finished or now)
        if said:
            log.info("%s: moved to %s", job.source, moved)
        else:
            log.info("%s had already failed (%s); moved to %s", job.source, reason, moved)
        self.inbox.forget(path)

    def recheck(self, now: float, mono: float) -> None:
        """The held files due: unchanged since they failed? then they go to failed/."""
        for path, job_id in self.inbox.due_rechecks(mono):
            job = self.ledger.get(job_id)
            if job is not None and job.state == "failed" and \
                    outcome.source_changed(path, job.content_key) is None:
                self.finish_failed(job, path, now, said=True)
                self.announce(job, job.finished or now)
            else:  # it changed: a copy that paused; its new bytes are a new job
                self.inbox.tracker.observe(path, mono)

    def announce(self, job: Job, when: float) -> None:
        self.hooks.emit(Event("failed", job.source, "", job.error or "failed",
                              when - (job.started or when)))

"""How a job's run ends, as its worker reported it: published, or failed of some kind.

Published: the job is marked done, then its source is moved to done/ (or kept), then its work
folder goes. A worker that died on its job counts an attempt. Failed (the kinds of
`nstd.daemon.jobspec`): ``stopped`` (a stop or a park) and ``no_space`` (ENOSPC: the daemon
then waits for disk space, `nstd.daemon.space`) put the job back without counting the
attempt; ``name_taken`` picks another output name; ``oom`` shrinks the memory budget;
``input`` may be a copy still in progress; the rest is `Failures.fail`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nstd.config import Config
from nstd.daemon import outcome
from nstd.daemon.claim import Claims
from nstd.daemon.failures import Failures
from nstd.daemon.hooks import Event, Hooks
from nstd.daemon.intake import user_name
from nstd.daemon.jobspec import JobSpec, kind_of
from nstd.daemon.ledger import Job, Ledger
from nstd.daemon.space import Need, SpaceGuard, stored_frames
from nstd.faults import failpoint
from nstd.text import plural

log = logging.getLogger("nstd.daemon.supervisor")


class Endings:
    """Records the end of a job's run in the ledger and acts on it."""

    def __init__(self, config: Config, ledger: Ledger, failures: Failures, claims: Claims,
                 space: SpaceGuard, hooks: Hooks, clock: Callable[[], float]) -> None:
        self.config = config
        self.ledger = ledger
        self.failures = failures
        self.claims = claims
        self.space = space
        self.hooks = hooks
        self.inbox = failures.inbox
        self.work = Path(config.daemon.work)
        self._clock = clock

    def reported(self, job: Job, spec: JobSpec | None, data: dict[str, Any], now: float,
                 mono: float, need: Need | None) -> None:
        """The worker's "published" or "failed" event for ``job`` (sent as ``spec``)."""
        event = data.get("event")
        if event == "published":
            self.published(job, Path(data.get("output") or ""), str(data.get("summary")))
        elif event == "failed":
            reason = str(data.get("reason"))
            if spec is not None:  # the user's name for the file, not the linked copy's
                reason = reason.replace(spec.source, user_name(self.inbox.path, job.source))
            self.failed(job, str(data.get("kind")), reason, now, mono, need)

    def worker_died(self, job: Job, how: str, now: float) -> None:
        """Its worker died while running ``job``: an attempt, like a passing failure."""
        current = self.ledger.get(job.id) or job
        reason = f"the worker process died ({how})"
        if current.output:  # what it was writing there (a video's encoder) is of no use now
            removed = outcome.clean_temps_of(Path(current.output))
            if removed:
                log.info("removed %s the dead worker left beside %s",
                         plural(removed, "unfinished temporary file"), current.output)
        if current.attempts >= self.config.daemon.max_attempts:
            reason += f" on this file {plural(current.attempts, 'time')}"
        self.failures.fail(job, reason, now, permanent=False)

    def published(self, job: Job, output: Path, summary: str) -> None:
        self.ledger.complete(job.id, str(output), self._clock())
        self.space.job_done()
        failpoint("daemon.completed")
        log.info("done %s -> %s (%s)", job.source, output, summary)
        self.hooks.emit(Event("done", job.source, str(output), "",
                              self._clock() - (job.started or self._clock())))
        path = self.inbox.path / job.source
        try:
            what = outcome.finish_source(path, job, self.config)
        except OSError as exc:
            what = f"could not handle the source ({exc.strerror or exc}); will retry"
        self.inbox.forget(path)
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        log.info("%s: %s", job.source, what)  # the job's last line: nothing of it is left

    def failed(self, job: Job, kind: str, reason: str, now: float, mono: float,
               need: Need | None = None) -> None:
        """A worker reported that ``job`` failed with ``kind`` (``need``: what the job was
        estimated to write, `nstd.daemon.space`)."""
        if kind == "stopped":
            self.ledger.release(job.id, now)
            log.info("stopped %s: back in the queue (%s)", job.source, reason)
        elif kind == "no_space":
            self.ledger.release(job.id, now)
            log.warning("%s ran out of disk space (%s): back in the queue", job.source, reason)
            stored = stored_frames(self.ledger.get(job.id) or job)
            self.space.after_enospc(need or Need(), stored, mono)
        elif kind == "oom":
            self.failures.shrink(job, reason)
        elif kind == "name_taken":
            log.warning("%s; choosing another name", reason)
            current = self.ledger.get(job.id) or job
            label = Path(current.output or "x").stem.rsplit(".", 1)[-1]
            self.claims.output_for(current, kind_of(job.source) or "image", label, fresh=True)
            self.ledger.release(job.id, now)
        elif kind == "input":
            self.failures.unreadable(job, reason, now, mono)
        else:
            self.failures.fail(job, reason, now, permanent=(kind == "permanent"))

"""A claimed job made ready for a worker: its `JobSpec`, or the reason it ends here.

At claim the source is checked against the bytes that were queued (a file replaced or gone is
dropped: a replacement is a job of its own), the job's merged settings and styles are checked
again, its style masks and source are linked into its work folder (what the worker reads),
and its output name is chosen and recorded in the ledger before anything is published: a job
that finds its recorded output already there (published, then killed before "done") checks it
and finishes without computing again; other jobs never pick a recorded name.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from nstd.config import Config, to_mapping
from nstd.daemon import outcome
from nstd.daemon.failures import Failures
from nstd.daemon.inbox import Inbox
from nstd.daemon.intake import job_config, resolve_style, style_label
from nstd.daemon.jobspec import INPUT_FOLDER, STORE_FOLDER, JobSpec, check_job, kind_of, link_source
from nstd.daemon.ledger import Job, Ledger
from nstd.daemon.maskfiles import MASKS_FOLDER, check_masks, link_masks, mask_path
from nstd.errors import ConfigError, InputError
from nstd.faults import failpoint

log = logging.getLogger("nstd.daemon.supervisor")


class Claims:
    """Prepares claimed jobs (`prepare`) and names their outputs (`output_for`)."""

    def __init__(self, config: Config, ledger: Ledger, inbox: Inbox, failures: Failures,
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.ledger = ledger
        self.inbox = inbox
        self.failures = failures
        self.styles = Path(config.daemon.styles)
        self.work = Path(config.daemon.work)
        self.outbox = Path(config.daemon.outbox)
        self._clock = clock

    def prepare(self, job: Job, mono: float) -> JobSpec | None:
        """Everything a worker needs for ``job``, or None when the job ended here (dropped,
        failed, finished)."""
        path = self.inbox.path / job.source
        why_not = outcome.source_changed(path, job.content_key)
        if why_not is not None:
            self.drop(job, path, why_not, mono)
            return None
        checked = self._check(job, path)
        if checked is None:
            return None
        config, kind, style_paths = checked
        work = self.work / str(job.id)
        linked = self._link(job, path, kind, style_paths, mono)
        if linked is None:
            return None
        masks, source, output = linked
        existing = os.path.lexists(output)
        attempt = f"attempt {job.attempts}/{self.config.daemon.max_attempts}"
        if existing:
            log.info("%s: its result %s was already published; finishing", job.source, output)
        else:
            log.info("started %s (job %d, %s, style %s)", job.source, job.id, attempt,
                     job.style)
        return JobSpec(job_id=job.id, name=job.source, source=str(source), kind=kind,
                       styles=tuple(map(str, style_paths)), config=to_mapping(config),
                       masks=tuple(map(str, masks)),
                       work_dir=str(work / STORE_FOLDER), output=str(output),
                       verify_existing=existing)

    def _check(self, job: Job, path: Path) -> tuple[Config, str, list[Path]] | None:
        """(merged config, kind, style files), or None when the job failed for good here."""
        kind = kind_of(path)
        try:
            config = job_config(self.config, job.settings, self.inbox.path)
            problems = check_job(config, kind)
            if problems:
                raise ConfigError(problems, source="settings")
            style_paths = [resolve_style(self.styles, name)
                           for name in [s for s, _ in job.masks] or [job.style]]
            if kind is None:
                raise InputError(f"{path.name}: not an image or a video nstd can read")
        except ConfigError as exc:
            self.failures.fail(job, exc.reason("settings"), self._clock(), permanent=True)
            return None
        except InputError as exc:
            self.failures.fail(job, str(exc), self._clock(), permanent=True)
            return None
        return config, kind, style_paths

    def _link(self, job: Job, path: Path, kind: str, style_paths: list[Path],
              mono: float) -> tuple[tuple[Path, ...], Path, Path] | None:
        """(mask copies, linked source, output), or None when the job ended here."""
        work = self.work / str(job.id)
        try:
            masks = self._take_masks(job, work)
        except InputError as exc:  # a mask went or changed since intake: the user must act
            self.failures.fail(job, str(exc), self._clock(), permanent=True)
            return None
        except OSError as exc:
            self.failures.fail(job, f"cannot copy a style mask: {exc.strerror or exc}",
                               self._clock(), permanent=False)
            return None
        try:
            failpoint("daemon.link")
            linked = link_source(path, work / INPUT_FOLDER, job.content_key)
            output = self.output_for(job, kind, "+".join(map(style_label, style_paths)))
            output.parent.mkdir(parents=True, exist_ok=True)
        except InputError:
            self.drop(job, path, "replaced", mono)
            return None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            self.failures.fail(job, f"{exc.strerror or exc}{where}", self._clock(),
                               permanent=False)
            return None
        return masks, linked, output

    def _take_masks(self, job: Job, work: Path) -> tuple[Path, ...]:
        """The job's style masks copied into its work folder (the copies are what the worker
        reads). InputError (the job fails) when one is missing or no longer valid."""
        if not job.masks:
            return ()
        inbox = self.inbox.path
        check_masks(job.masks, inbox, job.source, inbox / job.source,
                    kind_of(job.source), self.config.limits.max_pixels)
        return link_masks([mask_path(inbox, job.source, m) for _, m in job.masks],
                          work / INPUT_FOLDER / MASKS_FOLDER)

    def drop(self, job: Job, path: Path, why_not: str, mono: float) -> None:
        self.ledger.forget(job.id)
        self.inbox.forget(path)
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        log.info("dropped job %d: %s was %s before it was processed", job.id, job.source,
                 why_not)
        self.inbox.tracker.observe(path, mono)  # a replacement is a job of its own

    def output_for(self, job: Job, kind: str, style: str, *, fresh: bool = False) -> Path:
        """The job's recorded output, or a new free name recorded now (before publishing)."""
        if job.output and not fresh:
            return Path(job.output)
        reserved = {j.output for j in self.ledger.active() if j.output and j.id != job.id}
        if job.output:
            reserved.add(job.output)
        base = outcome.output_base(self.outbox, job.source, style, kind)
        output = outcome.choose_output(base, reserved)
        self.ledger.set_output(job.id, str(output))
        return output

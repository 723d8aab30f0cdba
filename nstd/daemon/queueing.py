"""A settled inbox file becomes a queued job (or is left alone, refused, or finished).

Exactly once across kill -9: a file whose job is done (killed between marking it done and
moving the source) is moved then, never processed again; likewise a file whose job is marked
failed and that has not been touched since (its ctime is older than the failure: `nstd retry`
and a manual move back both rename it, which sets the ctime) goes to failed/ then. Zero-byte
files are left alone until they have content (usually a copy that has not started writing).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nstd.config import Config
from nstd.daemon import outcome
from nstd.daemon.failures import Failures
from nstd.daemon.inbox import Inbox
from nstd.daemon.intake import relative_source, take
from nstd.daemon.ledger import Ledger, content_key
from nstd.daemon.watch import log_once, regular_signature
from nstd.errors import InputError
from nstd.faults import failpoint

log = logging.getLogger("nstd.daemon.supervisor")


class Queueing:
    """Turns settled files into jobs: `queue_file` for each file the tracker says is due."""

    def __init__(self, config: Config, ledger: Ledger, inbox: Inbox,
                 failures: Failures) -> None:
        self.config = config
        self.ledger = ledger
        self.inbox = inbox
        self.failures = failures

    def queue_settled(self, now: float, mono: float) -> None:
        """Queue each file the tracker says has settled; one file's trouble is logged and
        never stops the others (nor the daemon)."""
        for path in self.inbox.tracker.due(mono):
            failpoint("intake.settled")
            try:
                self.queue_file(path, now)
            except Exception as exc:  # noqa: BLE001 - one file must never stop the daemon
                log.error("could not queue %s: %s: %s", path, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)

    def queue_file(self, path: Path, now: float) -> None:
        inbox = self.inbox
        sig = regular_signature(path)
        if sig is None or inbox.known.get(path) == sig:
            return
        if sig[0] == 0:
            # Most likely a copy that has not started writing: failing it would move the file
            # while its writer still holds it open. Taken once it has content.
            log_once(("empty", path, sig), logging.INFO,
                     "left alone: %s is empty (0 bytes); it is taken once it has content",
                     inbox.rel(path))
            inbox.remember(path, sig)
            return
        keyed = self._key(path)
        if keyed is None:
            return
        rel, key = keyed
        prior = self.ledger.find(rel, key)
        if prior is not None and prior.state == "failed" and untouched_since(path,
                                                                             prior.finished):
            inbox.remember(path, sig)
            self.failures.finish_failed(prior, path, now)
            return
        intake = take(inbox.path, path, self.config)
        job = self.ledger.enqueue(rel, key, intake.style, intake.settings, now, intake.masks)
        inbox.remember(path, sig)
        if job is None:
            self._already_known(path, rel, key)
            return
        if intake.error is not None:  # refused at the door: no worker's turn is spent on it
            self.failures.fail(job, intake.error, now, permanent=True,
                               settings=intake.settings, hold=intake.unreadable, refused=True)
            return
        extra = f", sidecar {intake.sidecar.name}" if intake.sidecar else ""
        log.info("queued %s (job %d, style %s%s)", rel, job.id, intake.style, extra)

    def _key(self, path: Path) -> tuple[str, str] | None:
        """(source relative to the inbox, content key), or None when the file cannot be
        queued now (gone, outside the inbox, unreadable: logged)."""
        try:
            return relative_source(self.inbox.path, path), content_key(path)
        except ValueError:
            return None  # not inside the inbox (a moved-out file's stale event)
        except FileNotFoundError:
            return None
        except InputError as exc:
            log.info("left alone: %s", exc)
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s); trying again at the next rescan", path,
                        exc.strerror or exc)
            return None

    def _already_known(self, path: Path, rel: str, key: str) -> None:
        """The same bytes are queued, running or done. Done but still here: we were killed
        between marking it done and moving the source; finish that now."""
        job = self.ledger.find(rel, key)
        if job is None or job.state != "done" or self.config.daemon.originals == "keep":
            return
        what = outcome.finish_source(path, job, self.config)
        log.info("%s was already done (%s); %s", rel, job.output, what)
        self.inbox.forget(path)


def untouched_since(path: Path, when: float | None) -> bool:
    """True when ``path``'s inode has not changed (ctime) since ``when`` (epoch seconds).
    A rename sets the ctime, so a file moved back into the inbox is "touched"."""
    if when is None:
        return False
    try:
        return os.lstat(path).st_ctime < when
    except OSError:
        return False

"""The inbox as the supervisor sees it: the watch, the rescans, files settling, the files it
already knows, and the failed files it looks at again later.

The inbox folder itself may vanish (deleted, or a mount that went away): it is waited for,
never re-created, then the watch is re-armed and the folder rescanned. A file is queued once
it has settled (`StabilityTracker`); the files whose job is queued, running or done are
remembered by (size, mtime_ns), so a rescan does not hash them again. A file that failed as
unreadable or truncated is held (still known) and looked at again after a while: a copy that
paused is not a broken file.

Left alone (logged once, never moved): symlinks, FIFOs and devices, names that are not media,
folders nested deeper than `nstd.daemon.watch.MAX_DEPTH`, files still changing, and zero-byte
files (usually a copy that has not started writing; taken once they have content).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
from pathlib import Path
from typing import Any

from nstd.config import DaemonConfig
from nstd.daemon.intake import relative_source
from nstd.daemon.watch import (
    InboxEventHandler,
    StabilityTracker,
    regular_signature,
    scan_inbox,
    start_observer,
)

log = logging.getLogger("nstd.daemon.supervisor")

KNOWN_LIMIT = 100_000
# The inbox folder is checked (still the same folder? watch alive?) at most this often while
# present (at each step: the idle loop wakes at least every rescan), and polled this often
# while it is missing. Its deletion is an event that wakes the loop at once.
INBOX_CHECK_SECONDS = 10.0
INBOX_MISSING_POLL_SECONDS = 1.0


class Inbox:
    """The watched inbox folder. ``events`` is the loop's queue (watch events arrive there
    as paths); ``watch=False`` starts no observer (tests dispatch events to ``handler``)."""

    def __init__(self, config: DaemonConfig, events: queue.SimpleQueue[Any], *,
                 watch: bool = True) -> None:
        self.path = Path(config.inbox)
        self.handler = InboxEventHandler(self.path, events)
        # On inotify, a file modified and not closed since is still being written (watch.py).
        self.tracker = StabilityTracker(config.settle_seconds, writes=self.handler.writes)
        self.poll = config.poll
        self.rescan_seconds = config.rescan_seconds
        self.watch = watch
        self.observer: Any = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) being watched
        self.next_check = 0.0
        self.next_rescan = 0.0
        # Files whose job is queued, running or done, by (size, mtime_ns). Dropped when the
        # file leaves the inbox through us.
        self.known: dict[Path, tuple[int, int]] = {}
        # Failed as unreadable/truncated: (when to look again, path, job id).
        self.rechecks: list[tuple[float, Path, int]] = []

    def start(self, mono: float) -> None:
        """Start the watch and scan the folder."""
        self.identity = folder_identity(self.path)
        self._start_observer()
        self.next_check = mono + INBOX_CHECK_SECONDS
        self.rescan(mono)

    def rescan(self, mono: float) -> None:
        self.next_rescan = mono + self.rescan_seconds
        for path in scan_inbox(self.path):
            self.notice(path, mono, scan=True)

    def _start_observer(self) -> None:
        if self.watch and self.identity is not None:
            self.observer = start_observer(self.path, self.handler, poll=self.poll)

    def stop_observer(self) -> None:
        if self.observer is not None:
            logging.getLogger("watchdog.observers.inotify").addFilter(_quiet_inotify_stop)
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def event(self, path: Path, mono: float) -> None:
        """A watch event: a file changed, or the inbox folder itself was deleted or moved."""
        if path == self.path:
            self.check(mono, force=True)
        else:
            self.notice(path, mono)

    def check(self, mono: float, *, force: bool = False) -> None:
        """Re-arm the watch when the inbox folder was removed and came back, was replaced,
        or its watch died. A missing inbox is waited for, never re-created: it may be a
        mount that is not up yet, and files written into the bare mount point would hide
        under the mount later."""
        if not force and mono < self.next_check:
            return
        ident = folder_identity(self.path)
        self.next_check = mono + (INBOX_CHECK_SECONDS if ident is not None
                                  else INBOX_MISSING_POLL_SECONDS)
        if ident is not None and ident == self.identity and self._observer_alive():
            return
        if ident is None:
            if self.identity is not None:
                log.warning("the inbox %s is gone; waiting for it to come back (checked every "
                            "%.0f s)", self.path, INBOX_MISSING_POLL_SECONDS)
                self.identity = None
                self.stop_observer()
            return
        if self.identity is None:
            log.warning("the inbox %s is back; watching it again", self.path)
        elif ident != self.identity:
            log.warning("the inbox %s was replaced by another folder; watching that one",
                        self.path)
        else:
            log.warning("the watch on the inbox %s stopped; starting it again", self.path)
        self.stop_observer()
        self.identity = ident
        self._start_observer()
        for path in scan_inbox(self.path):
            self.notice(path, mono, scan=True)

    def _observer_alive(self) -> bool:
        observer = self.observer
        if not self.watch:
            return True
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def notice(self, path: Path, mono: float, *, scan: bool = False) -> None:
        sig = regular_signature(path)
        if sig is None or self.known.get(path) == sig:
            return
        if path not in self.tracker:  # once per arrival, not per write of a long copy
            log.info("noticed %s%s", self.rel(path), " (scan)" if scan else "")
        self.tracker.observe(path, mono)

    def remember(self, path: Path, sig: tuple[int, int]) -> None:
        if len(self.known) > KNOWN_LIMIT:
            self.known.clear()
        self.known[path] = sig

    def forget(self, path: Path) -> None:
        self.known.pop(path, None)

    def hold(self, until: float, path: Path, job_id: int) -> None:
        """Look at ``path`` (failed as unreadable) again at ``until`` (monotonic)."""
        self.rechecks.append((until, path, job_id))

    def due_rechecks(self, mono: float) -> list[tuple[Path, int]]:
        """The held files due now, as (path, job id); they are no longer held."""
        due = [(p, j) for t, p, j in self.rechecks if t <= mono]
        if due:
            self.rechecks = [r for r in self.rechecks if r[0] > mono]
        return due

    def waits(self, mono: float) -> list[float]:
        """Seconds until each thing of the inbox that is due next: rescan, settle, recheck,
        and the poll for a missing inbox (its deletion is an event)."""
        waits = [self.next_rescan - mono]
        if self.identity is None:
            waits.append(self.next_check - mono)
        due = self.tracker.next_due(mono)
        if due is not None:
            waits.append(due)
        if self.rechecks:
            waits.append(min(r[0] for r in self.rechecks) - mono)
        return waits

    def rel(self, path: Path) -> str:
        try:
            return relative_source(self.path, path)
        except ValueError:
            return str(path)


def folder_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a real folder (not a symlink), or None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _quiet_inotify_stop(record: logging.LogRecord) -> bool:
    """Drop watchdog's harmless "called when the thread is inactive" error: its emitter
    races with its own stop() (watchdog 7), and an ERROR line at every shutdown would only
    alarm whoever reads the journal."""
    return "called when the thread is inactive" not in record.getMessage()

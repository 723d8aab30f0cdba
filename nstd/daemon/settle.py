"""When a noticed inbox file has settled: its size and mtime stood still for
``settle_seconds`` and, on inotify, whoever writes it has closed it (`OpenWrites`).

Nothing here follows a symlink or opens a file (`nstd.daemon.watch` says why).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nstd.daemon.watch")


class _Once:
    """Logs a message once per key, remembering at most ``limit`` keys (bounded memory)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: set[object] = set()
        self._limit = limit

    def __call__(self, key: object, level: int, msg: str, *args: object) -> None:
        if key in self._seen:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(key)
        log.log(level, msg, *args)


_once = _Once()


def log_once(key: object, level: int, msg: str, *args: object) -> None:
    """Log ``msg`` once per ``key`` (bounded memory): for conditions a rescan finds again."""
    _once(key, level, msg, *args)





class OpenWrites:
    """Files an inotify watch saw written to (modified) with no closed-write since.

    Thread-safe: `InboxEventHandler` records on the observer's thread, `StabilityTracker`
    asks on the daemon's. A write needs an open descriptor and the kernel reports its close
    (IN_CLOSE_WRITE) even when the writer is killed, so "modified, not closed" means a writer
    still holds the file. Only modifications count, not creations: a move or a hard link into
    the inbox gives "created" and never a close. Attribute changes (utime, chmod) are other
    events and do not count either. At most ``limit`` files are remembered (the oldest entry
    is forgotten first; `StabilityTracker` also stops trusting an entry after ``open_limit``).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._open: dict[Path, None] = {}  # insertion-ordered: the oldest first
        self._limit = limit

    def modified(self, path: Path) -> None:
        with self._lock:
            self._open.pop(path, None)
            if len(self._open) >= self._limit:
                del self._open[next(iter(self._open))]
            self._open[path] = None

    def closed(self, path: Path) -> None:
        with self._lock:
            self._open.pop(path, None)

    def moved(self, src: Path, dest: Path) -> None:
        """A rename keeps the descriptor: a file still open under its old name is still open
        under the new one."""
        with self._lock:
            if src in self._open:
                del self._open[src]
                self._open[dest] = None

    def is_open(self, path: Path) -> bool:
        with self._lock:
            return path in self._open

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # when (size, mtime) last changed, on the caller's clock
    first_seen: float
    warned: bool = False
    writing: bool = False  # open for writing when last checked (OpenWrites)


class StabilityTracker:
    """Decides when a noticed file has stopped changing. Injected clock only.

    ``now`` may come from any monotonic-enough clock (the daemon uses ``time.monotonic()``);
    it is only ever compared with other ``now`` values given to the same tracker.

    With ``writes`` (the handler's `OpenWrites`, on inotify) a file that is still open for
    writing is never due: its settle time starts again when the writer closes it. A close
    event that never came (an inotify queue overflow, a watch restarted in between) would keep
    a file waiting for ever, so an entry unchanged in size and mtime for ``open_limit`` seconds
    is no longer trusted and the file is judged by size and mtime alone (logged).
    """

    def __init__(self, settle_seconds: float, *, warn_after: float | None = None,
                 writes: OpenWrites | None = None, open_limit: float | None = None) -> None:
        """``warn_after``: log once when a file is still changing (or open for writing) this
        long after it was first seen (default: the larger of 10 minutes and 20 x
        ``settle_seconds``). ``open_limit``: default the larger of an hour and 100 x
        ``settle_seconds``."""
        self.settle_seconds = float(settle_seconds)
        self.warn_after = (max(600.0, 20 * self.settle_seconds)
                           if warn_after is None else float(warn_after))
        self.open_limit = (max(3600.0, 100 * self.settle_seconds)
                           if open_limit is None else float(open_limit))
        self.writes = writes
        self._files: dict[Path, _Seen] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: object) -> bool:
        return Path(path) in self._files if isinstance(path, (str, os.PathLike)) else False

    def paths(self) -> list[Path]:
        """The files being watched until they settle."""
        return list(self._files)

    @staticmethod
    def _signature(path: Path) -> tuple[int, int] | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_size, st.st_mtime_ns

    def observe(self, path: str | os.PathLike[str], now: float) -> None:
        """Note that ``path`` may have changed (an event or a scan hit).

        A gone, unreadable or non-regular path is dropped. Observing an unchanged file does
        not restart its settle time, so repeated rescans cannot starve a quiet file; a file
        whose writer closed it since it was last seen open does restart it.
        """
        path = Path(path)
        sig = self._signature(path)
        if sig is None:
            self._files.pop(path, None)
            return
        seen = self._files.get(path)
        if seen is None:
            self._files[path] = _Seen(sig[0], sig[1], changed_at=now, first_seen=now,
                                      writing=self._open(path))
        elif (seen.size, seen.mtime_ns) != sig:
            seen.size, seen.mtime_ns = sig
            seen.changed_at = now
            seen.writing = self._open(path)
        else:
            self._update_writing(path, seen, now)

    def due(self, now: float) -> list[Path]:
        """Files unchanged for ``settle_seconds`` and not open for writing, re-checked now;
        they stop being tracked.

        A file that changed since it was last seen restarts its settle time instead; one that
        vanished is dropped. Returned in the order they were first noticed.
        """
        ready: list[Path] = []
        for path, seen in list(self._files.items()):
            self._update_writing(path, seen, now)
            if seen.writing or now - seen.changed_at < self.settle_seconds:
                self._warn_if_slow(path, seen, now)
                continue
            sig = self._signature(path)
            if sig is None:
                del self._files[path]
            elif (seen.size, seen.mtime_ns) != sig:
                seen.size, seen.mtime_ns = sig
                seen.changed_at = now
                self._warn_if_slow(path, seen, now)
            else:
                del self._files[path]
                ready.append(path)
        return ready

    def next_due(self, now: float) -> float | None:
        """Seconds until the earliest tracked file could be due (0 if now); None if none.

        A file open for writing waits for its close event (which wakes the daemon) or for
        ``open_limit``; it is re-checked at least every ``settle_seconds``.
        """
        if not self._files:
            return None
        earliest = min(seen.changed_at for seen in self._files.values())
        return max(0.0, earliest + self.settle_seconds - now)

    def _open(self, path: Path) -> bool:
        return self.writes is not None and self.writes.is_open(path)

    def _update_writing(self, path: Path, seen: _Seen, now: float) -> None:
        """Follow the open-for-writing state: a close restarts the settle time; an entry that
        stood still for ``open_limit`` is no longer trusted."""
        writing = self._open(path)
        if writing and now - seen.changed_at >= self.open_limit:
            log_once(("never closed", path, seen.size, seen.mtime_ns), logging.WARNING,
                     "%s was written and not closed, and has not changed for %.0f s; judging "
                     "it by size and mtime alone (a close event may have been lost)",
                     path, now - seen.changed_at)
            seen.writing = False
            return
        if seen.writing and not writing:
            seen.changed_at = now  # closed since it was last seen open: settle from here
        seen.writing = writing

    def _warn_if_slow(self, path: Path, seen: _Seen, now: float) -> None:
        if not seen.warned and now - seen.first_seen >= self.warn_after:
            seen.warned = True
            if seen.writing:
                log.warning("%s is still open for writing after %.0f s; waiting until its "
                            "writer closes it", path, now - seen.first_seen)
            else:
                log.warning("%s is still changing after %.0f s; waiting until it stops",
                            path, now - seen.first_seen)

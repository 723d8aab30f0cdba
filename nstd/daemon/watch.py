"""Noticing files in the inbox: name rules, a safe scan, a stability tracker, a thin handler.

Watchdog events are only *candidates*: a copy gives created -> modified... -> closed, a move
in gives only created, a ``x.part`` renamed gives moved, and network mounts give nothing. So
every event (and every scan hit) goes through `StabilityTracker`, which takes a file only
once its size and mtime have stood still for ``settle_seconds``; a start-up scan and a periodic
rescan (`scan_inbox`) catch what events miss.

Nothing here follows a symlink or opens a file: a link in the inbox must not make the service
read outside it, and opening a FIFO would block.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from nstd.daemon.intake import SIDECAR_SUFFIXES
from nstd.media.container import VIDEO_EXTENSIONS
from nstd.media.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

# The decoders are the authority on what they accept.
MEDIA_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS

# Names of files still being written by common tools, and sidecars (read with their input).
PARTIAL_SUFFIXES: frozenset[str] = frozenset({".part", ".tmp", ".crdownload"})

MAX_DEPTH = 32


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


def is_candidate_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name could be a job: not hidden, not partial, not a sidecar, media.

    Looks at the name only (the last component); `scan_inbox` and `InboxEventHandler` also
    skip hidden folders.
    """
    name = os.path.basename(os.fsdecode(path))
    if not name or name.startswith("."):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix in PARTIAL_SUFFIXES or suffix in SIDECAR_SUFFIXES:
        return False
    return suffix in MEDIA_EXTENSIONS


def regular_signature(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a regular file, from lstat (never follows or opens it).

    None when it is gone, or is a symlink, FIFO, socket or device (those are logged once:
    a link must not make the service read outside the inbox, and opening a FIFO blocks).
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return st.st_size, st.st_mtime_ns
    if stat.S_ISLNK(st.st_mode):
        _once(("symlink", path), logging.INFO,
              "left alone: %s is a symbolic link (not followed)", path)
    elif not stat.S_ISDIR(st.st_mode):
        _once(("special", path), logging.INFO, "left alone: %s is not a regular file", path)
    return None


def log_once(key: object, level: int, msg: str, *args: object) -> None:
    """Log ``msg`` once per ``key`` (bounded memory): for conditions a rescan finds again."""
    _once(key, level, msg, *args)


def _log_skipped_name(path: Path) -> None:
    """Say once why a non-candidate is left alone; quiet for the expected ones."""
    name = path.name
    suffix = path.suffix.lower()
    if name.startswith(".") or suffix in PARTIAL_SUFFIXES or suffix in SIDECAR_SUFFIXES:
        return  # temp files, in-progress downloads, sidecars: nothing to tell the user
    _once(("ext", path), logging.INFO,
          "left alone: %s (not an image or video extension: %s)",
          path, ", ".join(sorted(MEDIA_EXTENSIONS)))


def scan_inbox(inbox: str | os.PathLike[str], *, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Yield every candidate regular file under ``inbox`` (paths joined onto ``inbox``).

    Never follows symlinks (files or folders; logged once), yields only regular files
    (``S_ISREG`` from lstat: FIFOs, sockets and devices are never opened), skips hidden
    folders and anything deeper than ``max_depth`` folders. Unreadable folders and a missing
    inbox are logged and skipped, never raised: the rescan must keep the daemon alive.
    """
    root = Path(inbox)
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            if folder == root:
                _once(("missing", root), logging.WARNING, "the inbox %s does not exist", root)
            continue  # a sub-folder removed while we scan
        except OSError as exc:
            _once(("unreadable", folder), logging.WARNING, "cannot read folder %s: %s",
                  folder, exc)
            continue
        subfolders: list[tuple[Path, int]] = []
        for entry in entries:
            path = folder / entry.name
            try:
                if entry.is_symlink():
                    _once(("symlink", path), logging.INFO,
                          "left alone: %s is a symbolic link (not followed)", path)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith("."):
                        continue
                    if depth + 1 > max_depth:
                        _once(("deep", path), logging.WARNING,
                              "left alone: %s is nested deeper than %d folders", path, max_depth)
                        continue
                    subfolders.append((path, depth + 1))
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # vanished between listing and lstat
            if not stat.S_ISREG(mode):
                _once(("special", path), logging.INFO,
                      "left alone: %s is not a regular file", path)
                continue
            if is_candidate_name(path):
                yield path
            else:
                _log_skipped_name(path)
        # Depth-first in name order; reversed so the stack pops the first name first.
        stack.extend(reversed(subfolders))


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # when (size, mtime) last changed, on the caller's clock
    first_seen: float
    warned: bool = False


class StabilityTracker:
    """Decides when a noticed file has stopped changing. Injected clock only.

    ``now`` may come from any monotonic-enough clock (the daemon uses ``time.monotonic()``);
    it is only ever compared with other ``now`` values given to the same tracker.
    """

    def __init__(self, settle_seconds: float, *, warn_after: float | None = None) -> None:
        """``warn_after``: log once when a file is still changing this long after it was first
        seen (default: the larger of 10 minutes and 20 x ``settle_seconds``)."""
        self.settle_seconds = float(settle_seconds)
        self.warn_after = (max(600.0, 20 * self.settle_seconds)
                           if warn_after is None else float(warn_after))
        self._files: dict[Path, _Seen] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: object) -> bool:
        return Path(path) in self._files if isinstance(path, (str, os.PathLike)) else False

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
        not restart its settle time, so repeated rescans cannot starve a quiet file.
        """
        path = Path(path)
        sig = self._signature(path)
        if sig is None:
            self._files.pop(path, None)
            return
        seen = self._files.get(path)
        if seen is None:
            self._files[path] = _Seen(sig[0], sig[1], changed_at=now, first_seen=now)
        elif (seen.size, seen.mtime_ns) != sig:
            seen.size, seen.mtime_ns = sig
            seen.changed_at = now

    def due(self, now: float) -> list[Path]:
        """Files unchanged for ``settle_seconds``, re-checked now; they stop being tracked.

        A file that changed since it was last seen restarts its settle time instead; one that
        vanished is dropped. Returned in the order they were first noticed.
        """
        ready: list[Path] = []
        for path, seen in list(self._files.items()):
            if now - seen.changed_at < self.settle_seconds:
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
        """Seconds until the earliest tracked file could be due (0 if now); None if none."""
        if not self._files:
            return None
        earliest = min(seen.changed_at for seen in self._files.values())
        return max(0.0, earliest + self.settle_seconds - now)

    def _warn_if_slow(self, path: Path, seen: _Seen, now: float) -> None:
        if not seen.warned and now - seen.first_seen >= self.warn_after:
            seen.warned = True
            log.warning("%s is still changing after %.0f s; waiting until it stops",
                        path, now - seen.first_seen)


def _is_hidden_below(path: Path, inbox: Path) -> bool:
    """True when any folder between ``inbox`` and ``path`` is hidden (or path is outside),
    or ``path`` lies deeper than `MAX_DEPTH` folders (as `scan_inbox` skips it too)."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return True
    if len(parts) - 1 > MAX_DEPTH:
        _once(("deep", path.parent), logging.WARNING,
              "left alone: %s is nested deeper than %d folders", path.parent, MAX_DEPTH)
        return True
    return any(part.startswith(".") for part in parts[:-1])


class InboxEventHandler(FileSystemEventHandler):
    """Turns watchdog events into candidate paths on a thread-safe queue. Nothing else.

    Runs on the observer's thread: it never stats or opens the files (the daemon's
    `StabilityTracker` does, on its own thread). A created or moved-in folder is scanned,
    because files that arrive inside a folder produce no events of their own. When the inbox
    folder itself is deleted or moved away, the inbox path itself is put on the queue: the
    watch on it is dead, and the daemon re-arms it once the folder is back.
    """

    def __init__(self, inbox: str | os.PathLike[str],
                 paths: queue.SimpleQueue[Path] | None = None) -> None:
        super().__init__()
        self.inbox = Path(inbox)
        self.paths: queue.SimpleQueue[Path] = queue.SimpleQueue() if paths is None else paths

    def _offer(self, raw: bytes | str) -> None:
        if not raw:
            return
        path = Path(os.fsdecode(raw))
        if _is_hidden_below(path, self.inbox):
            return
        if is_candidate_name(path):
            self.paths.put(path)
        else:
            _log_skipped_name(path)

    def _scan_folder(self, raw: bytes | str) -> None:
        folder = Path(os.fsdecode(raw))
        # `folder / "x"` so that the folder's own name is checked for a leading dot too.
        if folder == self.inbox or _is_hidden_below(folder / "x", self.inbox):
            return
        # The depth limit counts from the inbox, not from the new folder.
        depth = len(folder.relative_to(self.inbox).parts)
        for path in scan_inbox(folder, max_depth=MAX_DEPTH - depth):
            self.paths.put(path)

    def _guarded(self, action: Callable[[bytes | str], None], raw: bytes | str) -> None:
        # An exception escaping a handler would stop the observer thread for good.
        try:
            action(raw)
        except Exception:  # pragma: no cover - defensive
            log.exception("ignored an error while handling an inbox event for %r", raw)

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self._guarded(self._scan_folder, event.src_path)
        else:
            self._guarded(self._offer, event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._guarded(self._offer, event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._guarded(self._offer, event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        # The final name is in dest_path (x.part -> x.mp4); a move out of the inbox is ignored
        # here and dropped by the tracker's re-stat.
        if event.is_directory:
            if self._is_inbox(event.src_path):
                self.paths.put(self.inbox)
                return
            self._guarded(self._scan_folder, event.dest_path)
        else:
            self._guarded(self._offer, event.dest_path)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if event.is_directory and self._is_inbox(event.src_path):
            self.paths.put(self.inbox)

    def _is_inbox(self, raw: bytes | str) -> bool:
        return bool(raw) and Path(os.fsdecode(raw)) == self.inbox


def start_observer(inbox: str | os.PathLike[str], handler: FileSystemEventHandler, *,
                   poll: bool, poll_interval: float = 2.0) -> BaseObserver:
    """Start a recursive watchdog observer on ``inbox``: inotify, or polling when ``poll``.

    Falls back to polling (with a warning) when inotify cannot start, e.g. when the
    per-user inotify watch limit is exhausted. Symlinked folders are not followed.
    """
    def start(observer: BaseObserver) -> BaseObserver:
        observer.schedule(handler, os.fspath(inbox), recursive=True, follow_symlink=False)
        observer.start()
        return observer

    if poll:
        return start(PollingObserver(timeout=poll_interval))
    try:
        return start(Observer())
    except OSError as exc:
        log.warning("inotify unavailable for %s (%s); polling every %.0f s instead",
                    inbox, exc, poll_interval)
        return start(PollingObserver(timeout=poll_interval))

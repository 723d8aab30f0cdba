"""Noticing files in the inbox: name rules, a safe scan, a thin handler; the stability
tracker is `nstd.daemon.settle` (its names are imported from here as well).

Watchdog events are only *candidates*: a copy gives created -> modified... -> closed, a move
in gives only created, a ``x.part`` renamed gives moved, and network mounts give nothing. So
every event (and every scan hit) goes through `StabilityTracker`, which takes a file only
once its size and mtime have stood still for ``settle_seconds``; a start-up scan and a periodic
rescan (`scan_inbox`) catch what events miss.

On inotify the handler also knows which files are still open for writing (`OpenWrites`: a
modified event and no closed-write since): such a file is never stable, however long it stands
still, so a copy that stalls half-way (Wi-Fi, a network share) is not taken. Polling has no
close events: there the rule stays size + mtime.

Nothing here follows a symlink or opens a file: a link in the inbox must not make the service
read outside it, and opening a FIFO would block.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import watchdog.events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from nstd.daemon.intake import SIDECAR_SUFFIXES
from nstd.daemon.maskfiles import is_mask_name
from nstd.daemon.settle import OpenWrites, StabilityTracker, log_once
from nstd.media.container import VIDEO_EXTENSIONS
from nstd.media.images import IMAGE_EXTENSIONS

__all__ = ["InboxEventHandler", "OpenWrites", "StabilityTracker", "is_candidate_name",
           "log_once", "regular_signature", "scan_inbox", "start_observer"]

log = logging.getLogger(__name__)

# The decoders are the authority on what they accept.
MEDIA_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS

# Names of files still being written by common tools, and sidecars (read with their input).
PARTIAL_SUFFIXES: frozenset[str] = frozenset({".part", ".tmp", ".crdownload"})

MAX_DEPTH = 32


def is_candidate_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name could be a job: not hidden, not partial, not a sidecar nor a
    style mask (``*.mask.png``, nstd.daemon.maskfiles), media.

    Looks at the name only (the last component); `scan_inbox` and `InboxEventHandler` also
    skip hidden folders.
    """
    name = os.path.basename(os.fsdecode(path))
    if not name or name.startswith("."):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix in PARTIAL_SUFFIXES or suffix in SIDECAR_SUFFIXES or is_mask_name(name):
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
        log_once(("symlink", path), logging.INFO,
              "left alone: %s is a symbolic link (not followed)", path)
    elif not stat.S_ISDIR(st.st_mode):
        log_once(("special", path), logging.INFO, "left alone: %s is not a regular file", path)
    return None


def _log_skipped_name(path: Path) -> None:
    """Say once why a non-candidate is left alone; quiet for the expected ones."""
    name = path.name
    suffix = path.suffix.lower()
    if name.startswith(".") or suffix in PARTIAL_SUFFIXES or suffix in SIDECAR_SUFFIXES:
        return  # temp files, in-progress downloads, sidecars: nothing to tell the user
    if is_mask_name(name):
        log_once(("mask", path), logging.INFO,
              "left alone: %s (a style mask, named *.mask.* so it is never a job)", path)
        return
    log_once(("ext", path), logging.INFO,
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
                log_once(("missing", root), logging.WARNING, "the inbox %s does not exist", root)
            continue  # a sub-folder removed while we scan
        except OSError as exc:
            log_once(("unreadable", folder), logging.WARNING, "cannot read folder %s: %s",
                  folder, exc)
            continue
        subfolders: list[tuple[Path, int]] = []
        for entry in entries:
            path = folder / entry.name
            try:
                if entry.is_symlink():
                    log_once(("symlink", path), logging.INFO,
                          "left alone: %s is a symbolic link (not followed)", path)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith("."):
                        continue
                    if depth + 1 > max_depth:
                        log_once(("deep", path), logging.WARNING,
                              "left alone: %s is nested deeper than %d folders", path, max_depth)
                        continue
                    subfolders.append((path, depth + 1))
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # vanished between listing and lstat
            if not stat.S_ISREG(mode):
                log_once(("special", path), logging.INFO,
                      "left alone: %s is not a regular file", path)
                continue
            if is_candidate_name(path):
                yield path
            else:
                _log_skipped_name(path)
        # Depth-first in name order; reversed so the stack pops the first name first.
        stack.extend(reversed(subfolders))


def _is_hidden_below(path: Path, inbox: Path) -> bool:
    """True when any folder between ``inbox`` and ``path`` is hidden (or path is outside),
    or ``path`` lies deeper than `MAX_DEPTH` folders (as `scan_inbox` skips it too)."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return True
    if len(parts) - 1 > MAX_DEPTH:
        log_once(("deep", path.parent), logging.WARNING,
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

    With ``reports_closes`` (set by `start_observer` for inotify; polling has no close
    events) it also keeps ``writes``, the files modified and not closed since, for the
    `StabilityTracker` to consult: ``StabilityTracker(settle, writes=handler.writes)``.
    """

    def __init__(self, inbox: str | os.PathLike[str],
                 paths: queue.SimpleQueue[Path] | None = None, *,
                 writes: OpenWrites | None = None, reports_closes: bool = False) -> None:
        super().__init__()
        self.inbox = Path(inbox)
        self.paths: queue.SimpleQueue[Path] = queue.SimpleQueue() if paths is None else paths
        self.writes = OpenWrites() if writes is None else writes
        self.reports_closes = reports_closes

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
            if self.reports_closes and event.src_path:
                # Recorded before the path is offered: the daemon must never see the event
                # without knowing that a writer holds the file.
                self.writes.modified(Path(os.fsdecode(event.src_path)))
            self._guarded(self._offer, event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        # watchdog's "closed" is IN_CLOSE_WRITE: a writer let go (a reader's close is
        # "closed_no_write", not handled).
        if not event.is_directory:
            if event.src_path:
                self.writes.closed(Path(os.fsdecode(event.src_path)))
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
            if event.src_path:
                src = Path(os.fsdecode(event.src_path))
                dest = Path(os.fsdecode(event.dest_path)) if event.dest_path else None
                if dest is not None and self.inbox in dest.parents:
                    self.writes.moved(src, dest)
                else:
                    self.writes.closed(src)  # moved out of the inbox: not ours to wait for
            self._guarded(self._offer, event.dest_path)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if event.is_directory and self._is_inbox(event.src_path):
            self.paths.put(self.inbox)
        elif not event.is_directory and event.src_path:
            self.writes.closed(Path(os.fsdecode(event.src_path)))  # nothing left to wait for

    def _is_inbox(self, raw: bytes | str) -> bool:
        return bool(raw) and Path(os.fsdecode(raw)) == self.inbox


def start_observer(inbox: str | os.PathLike[str], handler: FileSystemEventHandler, *,
                   poll: bool, poll_interval: float = 2.0) -> BaseObserver:
    """Start a recursive watchdog observer on ``inbox``: inotify, or polling when ``poll``.

    Falls back to polling (with a warning) when inotify cannot start, e.g. when the
    per-user inotify watch limit is exhausted. Symlinked folders are not followed. An
    `InboxEventHandler` is told whether close events will come (``reports_closes``): only
    inotify has them, so only there does "modified, not closed" mean "still being written".
    """
    def start(observer: BaseObserver) -> BaseObserver:
        if isinstance(handler, InboxEventHandler):
            handler.reports_closes = _reports_closes(observer)
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


def _reports_closes(observer: BaseObserver) -> bool:
    """inotify reports closed-writes; polling and other platforms' observers do not. Older
    watchdog releases also reported attribute changes (a ``cp -p``'s utime after its close)
    as "modified", which would look like a writer that never closes: trusted only where
    attribute changes are events of their own."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # pragma: no cover - not Linux
        return False
    return isinstance(observer, InotifyObserver) and hasattr(watchdog.events, "FileAttribEvent")

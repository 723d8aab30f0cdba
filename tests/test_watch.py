"""Noticing files: name rules, the safe scan, the stability rule (fake clock), the event handler."""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from nstd.daemon.watch import (
    InboxEventHandler,
    OpenWrites,
    StabilityTracker,
    is_candidate_name,
    scan_inbox,
    start_observer,
)


def drain(q: queue.SimpleQueue) -> list[Path]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def write(path: Path, data: bytes = b"x", mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize("name, ok", [
    ("photo.jpg", True), ("PHOTO.JPEG", True), ("a.png", True), ("a.webp", True),
    ("scan.TIFF", True), ("clip.mp4", True), ("clip.MOV", True), ("clip.mkv", True),
    ("clip.webm", True), ("a b 'c' -d.m4v", True), ("été.avi", True), ("x\ny.png", True),
    (".hidden.png", False), ("clip.mp4.part", False), ("clip.mp4.tmp", False),
    ("clip.mp4.crdownload", False), ("clip.mp4.yaml", False), ("clip.yml", False),
    ("notes.txt", False), ("noext", False), ("archive.zip", False), ("", False),
])
def test_is_candidate_name(name: str, ok: bool) -> None:
    assert is_candidate_name(name) is ok
    if name:
        assert is_candidate_name(Path("/inbox/sub") / name) is ok


def test_scan_finds_media_recursively_and_skips_the_rest(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "a.png")
    write(inbox / "mosaic" / "clip.mp4")
    write(inbox / "mosaic" / "clip.mp4.yaml")
    write(inbox / "mosaic" / "deeper" / "b.jpg")
    write(inbox / ".hidden" / "c.png")  # hidden folder
    write(inbox / ".d.png")
    write(inbox / "e.png.part")
    write(inbox / "f.tmp")
    write(inbox / "notes.txt")
    found = sorted(p.relative_to(inbox).as_posix() for p in scan_inbox(inbox))
    assert found == ["a.png", "mosaic/clip.mp4", "mosaic/deeper/b.jpg"]


def test_scan_skips_symlinks_and_fifos(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "outside"
    secret = write(outside / "secret.png", b"secret")
    inbox = tmp_path / "inbox"
    write(inbox / "real.png")
    (inbox / "link.png").symlink_to(secret)
    (inbox / "linkdir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(inbox / "pipe.mp4")
    with caplog.at_level(logging.INFO, logger="nstd.daemon.watch"):
        first = list(scan_inbox(inbox))  # must not block on the FIFO
        second = list(scan_inbox(inbox))
    assert first == second == [inbox / "real.png"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("link.png is a symbolic link" in m for m in messages) == 1  # logged once
    assert sum("linkdir is a symbolic link" in m for m in messages) == 1
    assert sum("pipe.mp4 is not a regular file" in m for m in messages) == 1
    assert secret.read_bytes() == b"secret"


def test_scan_depth_limit_and_missing_inbox(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    deep = inbox.joinpath(*[f"d{i}" for i in range(5)])
    write(deep / "deep.png")
    write(inbox / "d0" / "shallow.png")
    assert [p.name for p in scan_inbox(inbox, max_depth=3)] == ["shallow.png"]
    assert sorted(p.name for p in scan_inbox(inbox, max_depth=5)) == ["deep.png", "shallow.png"]
    assert list(scan_inbox(tmp_path / "missing")) == []  # logged, never raised


def test_scan_skips_unreadable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "locked" / "a.png")
    write(inbox / "b.png")
    real_scandir = os.scandir

    def scandir(path):  # chmod 0 does not stop root, so refuse the way the kernel would
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("nstd.daemon.watch.os.scandir", scandir)
    assert [p.name for p in scan_inbox(inbox)] == ["b.png"]


def test_file_written_in_pieces_is_due_only_once_stable(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    tracker = StabilityTracker(settle_seconds=5.0)
    now = 1000.0
    for piece in range(6):  # a slow copy: a piece every 3 s, each seen by an event
        with path.open("ab") as f:
            f.write(b"x" * 1000)
        os.utime(path, ns=(piece, piece * 1_000_000_000))  # a distinct mtime per piece
        tracker.observe(path, now)
        assert tracker.due(now) == []
        now += 3.0
        assert tracker.due(now) == []  # 3 s < 5 s since the last change
    assert tracker.next_due(now) == pytest.approx(2.0)
    assert tracker.due(now + 1.9) == []
    assert tracker.due(now + 2.0) == [path]
    assert path not in tracker and len(tracker) == 0  # handed over once
    assert tracker.due(now + 100) == []


def test_change_without_event_is_caught_at_due_time(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", b"1", mtime=100)
    tracker = StabilityTracker(settle_seconds=5.0)
    tracker.observe(path, now=0.0)
    write(path, b"12", mtime=200)  # grew, but no event (e.g. a network mount)
    assert tracker.due(now=5.0) == []  # re-stat at due time saw the change
    assert tracker.due(now=9.9) == []
    assert tracker.due(now=10.0) == [path]


def test_repeated_observations_do_not_reset_settling(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", b"1", mtime=100)
    tracker = StabilityTracker(settle_seconds=5.0)
    for t in range(0, 5):
        tracker.observe(path, now=float(t))  # rescans and spurious events
    assert tracker.due(now=5.0) == [path]


def test_vanished_and_replaced_by_special_files_are_dropped(tmp_path: Path) -> None:
    tracker = StabilityTracker(settle_seconds=1.0)
    gone = write(tmp_path / "gone.png")
    tracker.observe(gone, now=0.0)
    gone.unlink()
    assert tracker.due(now=2.0) == [] and len(tracker) == 0
    tracker.observe(tmp_path / "never.png", now=0.0)
    assert len(tracker) == 0
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    tracker.observe(fifo, now=0.0)
    assert len(tracker) == 0
    link = tmp_path / "link.png"
    link.symlink_to(write(tmp_path / "t.png"))
    tracker.observe(link, now=0.0)
    assert len(tracker) == 0
    assert tracker.due(now=5.0) == []


def test_zero_settle_is_due_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png")
    tracker = StabilityTracker(settle_seconds=0.0)
    tracker.observe(path, now=3.0)
    assert tracker.due(now=3.0) == [path]


def test_file_growing_forever_is_never_due_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "endless.mp4", b"")
    tracker = StabilityTracker(settle_seconds=5.0, warn_after=60.0)
    with caplog.at_level(logging.WARNING, logger="nstd.daemon.watch"):
        for step in range(100):
            now = step * 2.0
            with path.open("ab") as f:
                f.write(b"x")
            tracker.observe(path, now)
            assert tracker.due(now) == []
    warnings = [r for r in caplog.records if "still changing" in r.getMessage()]
    assert len(warnings) == 1


def test_handler_turns_file_events_into_candidates(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handler = InboxEventHandler(inbox)
    a = str(inbox / "a.png")
    handler.dispatch(FileCreatedEvent(a))
    handler.dispatch(FileModifiedEvent(a))
    handler.dispatch(FileClosedEvent(a))
    handler.dispatch(FileDeletedEvent(a))  # ignored: the tracker's re-stat drops it
    handler.dispatch(FileCreatedEvent(str(inbox / "notes.txt")))
    handler.dispatch(FileCreatedEvent(str(inbox / ".a.png.123.tmp")))
    handler.dispatch(FileCreatedEvent(str(inbox / "a.png.yaml")))
    handler.dispatch(FileCreatedEvent(str(inbox / ".git" / "x.png")))  # inside a hidden folder
    handler.dispatch(DirModifiedEvent(str(inbox)))
    assert drain(handler.paths) == [Path(a)] * 3


def test_part_file_renamed_to_final_becomes_a_candidate(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    part = write(inbox / "clip.mp4.part", b"data" * 100)
    handler = InboxEventHandler(inbox)
    tracker = StabilityTracker(settle_seconds=2.0)
    handler.dispatch(FileCreatedEvent(str(part)))
    handler.dispatch(FileModifiedEvent(str(part)))
    assert drain(handler.paths) == []
    final = inbox / "clip.mp4"
    part.rename(final)
    handler.dispatch(FileMovedEvent(str(part), str(final)))
    handler.dispatch(FileMovedEvent(str(final), str(tmp_path / "elsewhere.mp4")))  # moved out
    got = drain(handler.paths)
    assert got == [final]
    tracker.observe(got[0], now=10.0)
    assert tracker.due(now=12.0) == [final]


def test_folder_moved_in_is_scanned(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arrived = inbox / "mosaic"
    write(arrived / "one.png")
    write(arrived / "nested" / "two.mp4")
    write(arrived / "skip.txt")
    handler = InboxEventHandler(inbox)
    handler.dispatch(DirCreatedEvent(str(arrived)))
    assert sorted(p.name for p in drain(handler.paths)) == ["one.png", "two.mp4"]
    renamed = inbox / "renamed"
    arrived.rename(renamed)
    handler.dispatch(DirMovedEvent(str(arrived), str(renamed)))
    assert sorted(p.name for p in drain(handler.paths)) == ["one.png", "two.mp4"]
    write(inbox / ".trash" / "x.png")
    handler.dispatch(DirCreatedEvent(str(inbox / ".trash")))
    assert drain(handler.paths) == []


def test_handler_accepts_bytes_paths(tmp_path: Path) -> None:
    handler = InboxEventHandler(tmp_path)
    handler.dispatch(FileCreatedEvent(os.fsencode(tmp_path / "a.png")))
    assert drain(handler.paths) == [tmp_path / "a.png"]


@pytest.mark.parametrize("poll", [False, True])
def test_observer_end_to_end(tmp_path: Path, poll: bool) -> None:
    """A real observer (inotify, then polling) delivers a copy and a .part rename."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handler = InboxEventHandler(inbox)
    observer = start_observer(inbox, handler, poll=poll, poll_interval=0.2)
    try:
        write(inbox / "copied.png", b"x" * 100)
        write(inbox / "sub" / "late.mp4.part", b"y" * 100)
        (inbox / "sub" / "late.mp4.part").rename(inbox / "sub" / "late.mp4")
        expected = {inbox / "copied.png", inbox / "sub" / "late.mp4"}
        seen: set[Path] = set()
        deadline = time.monotonic() + 10
        while not expected <= seen and time.monotonic() < deadline:
            try:
                seen.add(handler.paths.get(timeout=0.2))
            except queue.Empty:
                pass
        assert expected <= seen
    finally:
        observer.stop()
        observer.join(timeout=5)


# ------------------------------------------------ files still open for writing (inotify)


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    """Wait for the observer thread to have handled an event (a real inotify delivery)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_file_written_and_not_closed_is_never_due(tmp_path: Path) -> None:
    """inotify: modified with no closed-write since means a writer holds it; a stall of any
    length is not stability. The close restarts the settle time."""
    path = write(tmp_path / "clip.mp4", b"half")
    handler = InboxEventHandler(tmp_path, reports_closes=True)
    tracker = StabilityTracker(settle_seconds=2.0, writes=handler.writes)
    handler.dispatch(FileCreatedEvent(str(path)))
    handler.dispatch(FileModifiedEvent(str(path)))
    for p in drain(handler.paths):
        tracker.observe(p, now=0.0)
    assert tracker.due(now=2.0) == []  # size and mtime stood still, but it is open
    assert tracker.due(now=60.0) == []
    assert tracker.next_due(now=60.0) is not None and path in tracker
    handler.dispatch(FileClosedEvent(str(path)))  # the copy resumed and finished
    for p in drain(handler.paths):
        tracker.observe(p, now=61.0)
    assert tracker.due(now=62.9) == []  # settle_seconds from the close, not from the stall
    assert tracker.due(now=63.0) == [path]


def test_only_modifications_mean_open_for_writing(tmp_path: Path) -> None:
    """A move or hard link in gives only "created" (never a close): not held. Without close
    events (polling) "modified" means nothing either: size and mtime decide."""
    moved_in = write(tmp_path / "moved.png")
    handler = InboxEventHandler(tmp_path, reports_closes=True)
    tracker = StabilityTracker(settle_seconds=1.0, writes=handler.writes)
    handler.dispatch(FileCreatedEvent(str(moved_in)))
    tracker.observe(moved_in, now=0.0)
    assert tracker.due(now=1.0) == [moved_in]

    polled = write(tmp_path / "polled.png")
    polling = InboxEventHandler(tmp_path)  # reports_closes=False: what polling gets
    tracker = StabilityTracker(settle_seconds=1.0, writes=polling.writes)
    polling.dispatch(FileModifiedEvent(str(polled)))
    tracker.observe(polled, now=0.0)
    assert len(polling.writes) == 0
    assert tracker.due(now=1.0) == [polled]


def test_open_state_follows_renames_and_deletions(tmp_path: Path) -> None:
    handler = InboxEventHandler(tmp_path, reports_closes=True)
    part, final = tmp_path / "clip.mp4.part", tmp_path / "clip.mp4"
    handler.dispatch(FileModifiedEvent(str(part)))
    handler.dispatch(FileMovedEvent(str(part), str(final)))  # renamed while still open
    assert handler.writes.is_open(final) and not handler.writes.is_open(part)
    handler.dispatch(FileDeletedEvent(str(final)))
    assert not handler.writes.is_open(final) and len(handler.writes) == 0
    handler.dispatch(FileModifiedEvent(str(final)))
    handler.dispatch(FileMovedEvent(str(final), str(tmp_path.parent / "elsewhere.mp4")))
    assert len(handler.writes) == 0  # moved out of the inbox: forgotten


def test_a_lost_close_event_holds_a_file_only_until_open_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "clip.mp4")
    handler = InboxEventHandler(tmp_path, reports_closes=True)
    tracker = StabilityTracker(settle_seconds=1.0, writes=handler.writes, open_limit=100.0,
                               warn_after=50.0)
    handler.dispatch(FileModifiedEvent(str(path)))  # ... and its close never arrives
    tracker.observe(path, now=0.0)
    with caplog.at_level(logging.WARNING, logger="nstd.daemon.watch"):
        assert tracker.due(now=50.0) == []
        assert tracker.due(now=99.0) == []
        assert tracker.due(now=100.0) == [path]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("still open for writing" in m for m in messages) == 1
    assert sum("a close event may have been lost" in m for m in messages) == 1


def test_open_writes_stay_bounded() -> None:
    writes = OpenWrites(limit=3)
    for i in range(5):
        writes.modified(Path(f"/inbox/{i}.mp4"))
    assert len(writes) == 3 and not writes.is_open(Path("/inbox/0.mp4"))
    assert writes.is_open(Path("/inbox/4.mp4"))


def test_real_inotify_copy_that_stalls_half_way_is_not_taken(tmp_path: Path) -> None:
    """A real writer (inotify events from the kernel) stalls for 3 x settle_seconds with half
    the file written: not due; once it completes and closes, due after settle_seconds.
    The tracker's clock is stepped by hand, so the stall costs no real time."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handler = InboxEventHandler(inbox)
    tracker = StabilityTracker(settle_seconds=5.0, writes=handler.writes)
    observer = start_observer(inbox, handler, poll=False)
    try:
        assert handler.reports_closes
        path = inbox / "clip.mp4"
        data = os.urandom(256 * 1024)
        with path.open("wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
            wait_until(lambda: handler.writes.is_open(path), "the modified event")
            for p in drain(handler.paths):
                tracker.observe(p, now=0.0)
            assert path in tracker
            assert tracker.due(now=15.0) == []  # 3 x settle_seconds of silence, still open
            f.write(data[len(data) // 2:])
        wait_until(lambda: not handler.writes.is_open(path), "the closed event")
        for p in drain(handler.paths):
            tracker.observe(p, now=16.0)
        assert tracker.due(now=20.9) == []
        assert tracker.due(now=21.0) == [path]
        assert path.read_bytes() == data
    finally:
        observer.stop()
        observer.join(timeout=5)


def test_polling_observer_does_not_claim_to_know_writers(tmp_path: Path) -> None:
    handler = InboxEventHandler(tmp_path, reports_closes=True)
    observer = start_observer(tmp_path, handler, poll=True, poll_interval=0.2)
    try:
        assert not handler.reports_closes  # no close events: size + mtime only
    finally:
        observer.stop()
        observer.join(timeout=5)

"""A file whose first bytes are not what its name says is refused at the door: named as the
user knows it (``inbox/holiday.jpg``), without a worker's turn, one log line per fact. And a
file a worker cannot read is reported under the user's name, never the work folder's copy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent

from nstd.daemon.failures import INPUT_HOLD_SETTLES
from nstd.errors import InputError
from nstd.media.images import read_image
from nstd.media.signature import check_signature, describe
from nstd.testing.media import write_test_image
from nstd.testing.stepped import SteppedSite


def drop_bytes(rig: SteppedSite, name: str, data: bytes) -> Path:
    path = rig.inbox / name
    path.write_bytes(data)
    rig.daemon.handler.dispatch(FileCreatedEvent(str(path)))
    return path


def daemon_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("nstd.daemon") and name in r.getMessage()]


def test_a_text_file_named_jpg_is_refused_at_intake_under_the_users_name(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = SteppedSite(tmp_path, rescan_seconds=1.0)  # rescans while the file is held
    rig.start()
    caplog.set_level(logging.INFO)
    drop_bytes(rig, "holiday.jpg", b"Dear all, the photos follow tomorrow.\n")
    rig.step()
    rig.settle()
    for _ in range(2 * INPUT_HOLD_SETTLES):  # held a while in case a copy paused, then moved
        rig.step(rig.settle_seconds)
    assert rig.ran == []  # never reached a worker
    (job,) = rig.ledger.recent(5)
    reason = "inbox/holiday.jpg is not a JPEG image: its first bytes are text"
    assert (job.state, job.error) == ("failed", reason)
    failed = Path(rig.config.daemon.failed)
    assert (failed / "holiday.jpg").is_file() and not (rig.inbox / "holiday.jpg").exists()
    assert reason in (failed / "holiday.jpg.error.txt").read_text()
    lines = daemon_lines(caplog, "holiday.jpg")
    assert lines == ["noticed holiday.jpg", f"refused holiday.jpg: {reason}",
                     f"holiday.jpg: moved to {failed / 'holiday.jpg'}"], lines


def test_a_png_named_mp4_is_refused_saying_what_it_is(tmp_path: Path) -> None:
    rig = SteppedSite(tmp_path)
    rig.start()
    png = write_test_image(tmp_path / "still.png", size=(8, 8))
    drop_bytes(rig, "clip.mp4", png.read_bytes())
    rig.step()
    rig.settle()
    assert rig.ran == []
    (job,) = rig.ledger.recent(5)
    assert job.error == "inbox/clip.mp4 is not an MP4 video: its first bytes are a PNG image"


def test_a_png_named_jpg_is_still_an_image_and_is_stylized(tmp_path: Path) -> None:
    """The check is by kind: a mislabelled photo is read by its content, as before."""
    rig = SteppedSite(tmp_path)
    rig.start()
    png = write_test_image(tmp_path / "photo.png", size=(8, 8))
    drop_bytes(rig, "photo.jpg", png.read_bytes())
    rig.step()
    rig.settle()
    rig.step()
    assert rig.ran == ["photo.jpg"]


def test_a_file_the_worker_cannot_read_is_named_as_the_user_knows_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A truncated PNG passes the door (its first bytes are a PNG's) and fails in the worker,
    which reads the job's linked copy in the work folder: the reason names inbox/..."""
    rig = SteppedSite(tmp_path)
    rig.runner.action = lambda request, kwargs: read_image(request.source, 10**6)
    rig.start()
    caplog.set_level(logging.INFO)
    whole = write_test_image(tmp_path / "whole.png", size=(64, 48)).read_bytes()
    drop_bytes(rig, "cut.png", whole[: len(whole) // 2])
    rig.step()
    rig.settle()
    rig.step()
    for _ in range(2 * INPUT_HOLD_SETTLES):
        rig.step(rig.settle_seconds)
    assert rig.ran == ["cut.png"]
    (job,) = rig.ledger.recent(5)
    assert job.state == "failed" and job.error.startswith("inbox/cut.png "), job.error
    work = str(rig.config.daemon.work)
    failed = Path(rig.config.daemon.failed)
    assert work not in (failed / "cut.png.error.txt").read_text()
    assert all(work not in line for line in daemon_lines(caplog, "cut.png"))


@pytest.mark.parametrize(("name", "head", "ok"), [
    ("a.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", True),
    ("a.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", True),
    ("a.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ", True),
    ("a.tif", b"II*\x00\x08\x00\x00\x00", True),
    ("a.bmp", b"BM6\x00\x00\x00\x00\x00", True),
    ("a.mp4", b"\x00\x00\x00\x18ftypisom", True),
    ("a.mkv", b"\x1a\x45\xdf\xa3\x01\x00\x00\x00", True),
    ("a.avi", b"RIFF\x10\x00\x00\x00AVI LIST", True),
    ("a.jpg", b"<html><body>404</body></html>", False),
    ("a.mov", b"#EXTM3U\n#EXT-X-VERSION:3\n", False),  # a playlist is not a container
    ("a.webm", b"\x00" * 16, False),
])
def test_signatures(tmp_path: Path, name: str, head: bytes, ok: bool) -> None:
    path = tmp_path / name
    path.write_bytes(head)
    if ok:
        check_signature(path, f"inbox/{name}")
    else:
        with pytest.raises(InputError, match=f"^inbox/{name} is not "):
            check_signature(path, f"inbox/{name}")


def test_describe_names_what_the_bytes_are() -> None:
    assert describe(b"hello, world\n") == "text"
    assert describe(b"\x89PNG\r\n\x1a\n") == "a PNG image"
    assert describe(b"\x00\x01\x02\x03") == "no image or video format nstd reads"

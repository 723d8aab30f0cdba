"""Free disk space: a job without room waits (no attempt counted, one disk-low event) and
runs once there is room; a running job short of room is parked between frames; ENOSPC puts a
job back the same way. The free space is a fake function here, and a real tmpfs in the last
test (where this machine lets us mount one)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileCreatedEvent

from nstd import faults
from nstd.cli.main import main
from nstd.daemon.hooks import Event
from nstd.daemon.ledger import DaemonLock, ledger_path
from nstd.daemon.lifecycle import classify
from nstd.daemon.pool import WorkerPlan
from nstd.daemon.space import (
    CHECK_SECONDS,
    MB,
    Need,
    SpaceGuard,
    estimate,
    free_bytes,
    output_size,
    read_status,
)
from nstd.daemon.supervisor import Supervisor
from nstd.errors import TransientError
from nstd.testing.media import write_test_clip
from nstd.testing.stepped import SteppedSite
from nstd.web.model import snapshot
from nstd.web.page import summary


class Disk:
    """A fake free-space function: the same ``free`` bytes under every folder."""

    def __init__(self, free_mb: float) -> None:
        self.free = int(free_mb * MB)

    def __call__(self, path: Path) -> int:
        return self.free


def site_with(tmp_path: Path, disk: Disk) -> tuple[SteppedSite, list[Event]]:
    rig = SteppedSite(tmp_path, free_space=disk, min_free_mb=100)
    events: list[Event] = []
    rig.daemon.hooks.emit = events.append  # type: ignore[method-assign]
    return rig, events


@pytest.fixture(autouse=True)
def no_faults() -> Iterator[None]:
    faults.configure(None)
    yield
    faults.configure(None)


def test_a_job_without_room_waits_uncounted_then_runs_when_space_returns(
        tmp_path: Path) -> None:
    disk = Disk(free_mb=50)  # below daemon.min_free_mb alone
    rig, events = site_with(tmp_path, disk)
    rig.start()
    rig.queue_files("a.png")
    for _ in range(3):  # steps while short: no claim, no second event
        assert rig.step(CHECK_SECONDS) is False
    job = rig.ledger.find("a.png")
    assert job.state == "queued" and job.attempts == 0 and job.error is None
    assert rig.ran == []
    assert [e.kind for e in events] == ["disk-low"]
    want = f"waiting for 101 MB free on {rig.config.daemon.work}"
    assert events[0].reason == want
    assert rig.daemon.space_state()["text"] == want
    assert read_status(rig.state)["text"] == want  # what `nstd status` shows
    assert want in rig.daemon._status_line()
    disk.free = 200 * MB
    rig.step(CHECK_SECONDS)
    assert rig.ledger.find("a.png").state == "done" and rig.ran == ["a.png"]
    assert rig.ledger.find("a.png").attempts == 1
    assert rig.daemon.space_state() == {"waiting": False} and read_status(rig.state) is None
    assert [e.kind for e in events] == ["disk-low", "done"]


def test_nstd_status_and_the_status_page_say_what_the_daemon_waits_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig, _ = site_with(tmp_path, Disk(free_mb=50))
    rig.start()
    rig.queue_files("a.png")
    want = f"waiting for 101 MB free on {rig.config.daemon.work}"
    with DaemonLock(ledger_path(rig.state)):  # as a running daemon holds it
        assert main(["status", "--config", str(rig.config_file())]) == 0
    assert f"daemon: running (pid {os.getpid()}), {want}" in capsys.readouterr().out
    data = snapshot(rig.daemon)
    assert data["space"]["waiting"] is True and data["space"]["text"] == want
    assert want in summary(data)


def test_a_new_shortage_after_space_returned_sends_a_new_event(tmp_path: Path) -> None:
    disk = Disk(free_mb=50)
    rig, events = site_with(tmp_path, disk)
    rig.start()
    rig.queue_files("a.png")
    disk.free = 200 * MB
    rig.step(CHECK_SECONDS)
    disk.free = 50 * MB
    rig.queue_files("b.png")
    rig.step(CHECK_SECONDS)
    assert [e.kind for e in events] == ["disk-low", "done", "queue-empty", "disk-low"]
    assert rig.ledger.find("b.png").state == "queued"


@pytest.mark.parametrize("spec", ["publish.before_rename=enospc*1",
                                  "job.heartbeat=enospc*1"])
def test_enospc_puts_the_job_back_without_an_attempt(tmp_path: Path, spec: str) -> None:
    rig, events = site_with(tmp_path, Disk(free_mb=500))
    rig.runner.action = lambda request, kwargs: kwargs["heartbeat"]()
    rig.start()
    faults.configure(spec)
    rig.queue_files("a.png")
    job = rig.ledger.find("a.png")
    assert job.state == "queued" and job.attempts == 0 and job.error is None
    assert [e.kind for e in events] == ["disk-low"]
    assert list(rig.outbox.iterdir()) == []  # nothing partial
    rig.step(CHECK_SECONDS)  # the disk has room (the fault passed): it runs again
    job = rig.ledger.find("a.png")
    assert job.state == "done" and job.attempts == 1


def test_enospc_is_its_own_failure_kind() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/work/1/store/x.png")
    assert classify(full, False) == ("no_space",
                                     "No space left on device (/work/1/store/x.png)")
    try:
        try:
            raise full
        except OSError as exc:
            raise TransientError("no space left on the device while trying to write x") \
                from exc
    except TransientError as wrapped:
        assert classify(wrapped, False)[0] == "no_space"
    assert classify(OSError(errno.EIO, "I/O error"), False)[0] == "transient"
    assert classify(TransientError("busy"), False)[0] == "transient"


# --------------------------------------------------------------------------- a running job


class HeldWorker:
    """A worker that keeps the jobs it is sent, so a test can step while one runs."""

    def __init__(self, deliver: Any) -> None:
        self.deliver = deliver
        self.sent: list[dict[str, Any]] = []
        self.pid: int | None = 4242
        self.returncode: int | None = None
        deliver({"event": "ready", "device": "test"})

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message.get("type") == "stop":
            self.returncode = 0

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class HeldBackend:
    def __init__(self) -> None:
        self.workers: list[HeldWorker] = []

    def plans(self) -> list[WorkerPlan] | None:
        return None

    def spawn(self, index: int, plan: WorkerPlan, deliver: Any, *,
              first: bool = True) -> HeldWorker:
        self.workers.append(HeldWorker(deliver))
        return self.workers[-1]

    def close(self) -> None:
        pass


def test_a_running_video_short_of_room_is_parked_and_resumes(tmp_path: Path) -> None:
    disk = Disk(free_mb=500)
    rig, events = site_with(tmp_path, disk)
    backend = HeldBackend()
    rig.daemon = Supervisor(rig.config, rig.ledger, backend=backend,
                            plans=[WorkerPlan(None, 1)], clock=rig.clock,
                            monotonic=rig.clock, watch=False, free_space=disk,
                            hooks=rig.daemon.hooks)
    rig.start()
    path = rig.inbox / "v.mp4"
    write_test_clip(path, frames=8, size=(32, 24))
    rig.daemon.handler.dispatch(FileCreatedEvent(str(path)))
    rig.step()
    rig.settle()
    worker = backend.workers[0]
    job = rig.ledger.find("v.mp4")
    assert job.state == "running" and worker.sent[-1]["type"] == "job"
    worker.deliver({"event": "progress", "job": job.id, "stage": "frame", "done": 3,
                    "total": 8, "eta": 5.0})
    disk.free = 50 * MB
    rig.step(CHECK_SECONDS)
    assert worker.sent[-1] == {"type": "park"}  # stops between frames, frames kept
    assert [e.kind for e in events] == ["disk-low"]
    worker.deliver({"event": "failed", "job": job.id, "kind": "stopped",
                    "reason": "stopped after frame 3"})
    rig.step(CHECK_SECONDS)
    job = rig.ledger.find("v.mp4")
    assert job.state == "queued" and job.attempts == 0
    assert [e.kind for e in events] == ["disk-low"]
    disk.free = 500 * MB
    rig.step(CHECK_SECONDS)
    assert rig.ledger.find("v.mp4").state == "running" and worker.sent[-1]["type"] == "job"


# --------------------------------------------------------------------------- estimates


def test_the_estimate_of_a_video_counts_its_16_bit_frames_and_the_encoded_result(
        tmp_path: Path) -> None:
    rig = SteppedSite(tmp_path)
    clip = tmp_path / "v.mp4"
    write_test_clip(clip, frames=8, size=(64, 48))
    need = estimate(clip, rig.config)  # style.max_side 32: 32 x 24 frames
    assert output_size(64, 48, 32) == (32, 24)
    assert need == Need(frame_bytes=32 * 24 * 6, frames=8, output_bytes=8 * 32 * 24 // 4)
    assert need.remaining(stored=5) == (3 * 32 * 24 * 6, 8 * 32 * 24 // 4)
    assert estimate(tmp_path / "missing.png", rig.config) == Need()


# --------------------------------------------------------------------------- a real filesystem


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs; skipped where this test may not mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the fake "
                    "free-space tests above cover the same paths")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_small_disk_is_measured_and_its_shortage_clears(tmpfs: Path) -> None:
    site = SteppedSite(tmpfs, min_free_mb=0.25)
    guard = SpaceGuard(site.config, site.daemon.hooks)
    free = free_bytes(tmpfs)
    assert MB < free <= 2 * MB  # the folders and the ledger use a little of it
    need = Need(output_bytes=MB // 4)
    assert guard.short_for(need) is None
    filler = tmpfs / "filler.bin"
    filler.write_bytes(b"\0" * (free - MB // 4))
    shortage = guard.short_for(need)
    assert shortage is not None and shortage.required == MB // 2
    assert shortage.free == free_bytes(tmpfs) < MB // 2
    assert shortage.describe() == f"waiting for 1 MB free on {site.config.daemon.work}"
    guard.wait_for(shortage, 0.0)
    assert guard.blocked(CHECK_SECONDS / 2)
    filler.unlink()
    assert not guard.blocked(CHECK_SECONDS)


def test_enospc_again_and_again_with_room_backs_off_with_one_event(tmp_path: Path) -> None:
    """No inodes or quota left shows as ENOSPC with free space: the job waits longer each
    time (no attempt counted, one event), and goes on once a write succeeds."""
    rig, events = site_with(tmp_path, Disk(free_mb=500))
    rig.start()
    faults.configure("publish.before_rename=enospc*3")
    rig.queue_files("a.png")
    waits = []
    while rig.ledger.find("a.png").state != "done":
        assert rig.ledger.find("a.png").attempts == 0
        waits.append(rig.daemon.space.next_check - rig.clock.t)
        rig.step(waits[-1])
    assert waits == [CHECK_SECONDS, 2 * CHECK_SECONDS, 4 * CHECK_SECONDS]
    assert [e.kind for e in events] == ["disk-low", "done"]

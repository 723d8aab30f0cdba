"""Overnight habits: the work window (daemon.active_hours), `nstd pause` / `nstd resume`, and
the daemon's queue order after a stop (nstd.daemon.schedule; the ledger's own claim order is
in test_ledger.py).

Stepped supervisors on a fake clock (nstd.testing.stepped), one real daemon for a video
parked between frames by `nstd pause` and resumed from its stored frames.
"""

from __future__ import annotations

import io
import json
import os
import time
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from nstd.cli.main import main
from nstd.config import parse_config
from nstd.daemon.schedule import is_paused
from nstd.errors import ConfigError
from nstd.hours import parse_window
from nstd.testing.stepped import SteppedSite, local_time

NIGHT = "22:00-07:00"
FRAMES = 10


# --------------------------------------------------------------------------- the window


@pytest.mark.parametrize(("clock", "active"), [
    ((22, 0), True), ((23, 59), True), ((0, 0), True), ((6, 59), True),
    ((7, 0), False), ((12, 0), False), ((21, 59), False),
])
def test_a_window_across_midnight_includes_its_start_and_excludes_its_end(
        clock: tuple[int, int], active: bool) -> None:
    assert parse_window(NIGHT).is_active(datetime(2026, 1, 1, *clock)) is active


def test_a_day_window_and_the_next_start() -> None:
    day = parse_window("09:30-17:00")
    assert day.is_active(datetime(2026, 1, 1, 9, 30)) and not day.is_active(
        datetime(2026, 1, 1, 17, 0))
    night = parse_window(NIGHT)
    assert night.next_start(datetime(2026, 1, 1, 8, 0)) == datetime(2026, 1, 1, 22, 0)
    assert night.next_start(datetime(2026, 1, 1, 22, 1)) == datetime(2026, 1, 2, 22, 0)


@pytest.mark.parametrize(("value", "says"), [
    ("22:00-22:00", "start and end are the same (22:00-22:00); use null to work at all hours"),
    ("25:00-07:00", "hours must be 00-23"),
    ("10pm-7am", "must look like 22:00-07:00"),
])
def test_bad_active_hours_are_refused_at_parse_naming_the_key(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"daemon": {"active_hours": value}})
    (problem,) = caught.value.problems
    assert problem.startswith("daemon.active_hours: ") and says in problem


# --------------------------------------------------------------------------- the supervisor


def test_outside_the_window_files_queue_but_nothing_starts_until_it_opens(
        tmp_path: Path) -> None:
    # No rescan due before the window opens: the idle wait is the window's alone.
    site = SteppedSite(tmp_path, active_hours=NIGHT, rescan_seconds=600.0)
    site.clock.t = local_time(2026, 1, 1, 21, 58)
    site.start()
    site.queue_files("a.png")
    assert site.ran == [] and site.ledger.counts()["queued"] == 1
    assert site.daemon.schedule_state() == {"paused": True, "reason": "schedule",
                                            "until": "22:00"}
    # The idle wait ends when the window opens (about 2 minutes from 21:58), not later.
    wait = site.daemon.idle_timeout(site.clock.t, site.clock.t)
    assert 100 < wait <= 2 * 60
    site.clock.t = local_time(2026, 1, 1, 22, 0)
    assert site.step() and site.ran == ["a.png"]
    assert site.daemon.schedule_state()["paused"] is False
    assert site.ledger.counts()["done"] == 1


def test_nstd_pause_holds_the_queue_across_a_restart_and_resume_releases_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = SteppedSite(tmp_path)
    config = str(site.config_file())
    assert main(["pause", "--config", config]) == 0
    assert "nothing new starts" in capsys.readouterr().out and is_paused(site.state)
    site.start()
    site.queue_files("a.png")
    site.step(60)
    assert site.ran == [] and site.daemon.schedule_state() == {
        "paused": True, "reason": "manual", "until": None}
    assert main(["status", "--config", config]) == 0
    assert "paused (nstd pause); nstd resume to continue" in capsys.readouterr().out
    assert main(["status", "--json", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out)["schedule"] == {
        "paused": True, "reason": "manual", "until": None}
    site.daemon = site.new_daemon()  # a restart: the pause is a file, it still holds
    site.start()
    site.step(60)
    assert site.ran == []
    assert site.daemon.idle_timeout(site.clock.t, site.clock.t) <= 1.0  # polls for resume
    assert main(["resume", "--config", config]) == 0
    assert capsys.readouterr().out.strip() == "resumed"
    assert site.step() and site.ran == ["a.png"]


def test_status_says_paused_until_the_window_opens(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now()
    start = f"{(now.hour + 2) % 24:02d}:00"  # two hours ahead: outside the window now
    site = SteppedSite(tmp_path, active_hours=f"{start}-{(now.hour + 3) % 24:02d}:00")
    site.start()
    assert main(["status", "--config", str(site.config_file())]) == 0
    assert f"paused until {start}" in capsys.readouterr().out


class HeldWorker:
    """A worker that keeps its job until the test answers for it (a job in mid-frame)."""

    pid = 4242

    def __init__(self, deliver: Any) -> None:
        self.deliver = deliver
        self.sent: list[dict[str, Any]] = []
        deliver({"event": "ready", "device": "fake", "pid": self.pid})

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def poll(self) -> int | None:
        return None

    def kill(self) -> None:
        pass


def test_a_pause_parks_the_running_job_which_comes_back_first_without_penalty(
        tmp_path: Path) -> None:
    workers: list[HeldWorker] = []

    class Backend:
        def spawn(self, index: int, plan: Any, deliver: Any, *, first: bool = True) -> Any:
            workers.append(HeldWorker(deliver))
            return workers[-1]

    site = SteppedSite(tmp_path, backend=Backend(), active_hours=NIGHT)
    site.clock.t = local_time(2026, 1, 1, 6, 58)
    site.start()
    site.queue_files("a.png", "b.png")
    (worker,) = workers
    job = worker.sent[-1]["spec"]
    assert worker.sent[-1]["type"] == "job" and job["name"] == "a.png"
    site.step(120)  # 07:00: the window closes mid-job
    assert worker.sent[-1] == {"type": "park"}
    site.step(1)
    assert [m["type"] for m in worker.sent].count("park") == 1  # asked once per job
    # The worker's answer to a park: the job stopped between frames.
    worker.deliver({"event": "failed", "job": job["job_id"], "kind": "stopped",
                    "reason": "stylization stopped on request"})
    site.step(1)
    parked = site.ledger.get(job["job_id"])
    assert (parked.state, parked.attempts) == ("queued", 0)
    assert [m["type"] for m in worker.sent] == ["job", "park"]  # b.png did not start
    site.clock.t = local_time(2026, 1, 1, 22, 0)
    site.step()
    assert worker.sent[-1]["type"] == "job" and worker.sent[-1]["spec"]["name"] == "a.png"


def test_the_worker_pipe_parks_a_job_sent_before_and_not_one_sent_after() -> None:
    from nstd.daemon.jobspec import encode
    from nstd.daemon.worker import _Channel

    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "wb", buffering=0)
    _PIPES.append(writer)  # kept open: the channel ends the process when its pipe closes
    channel = _Channel(os.fdopen(read_fd, "rb"), io.BytesIO())

    def after(*messages: dict[str, Any]) -> bool:
        for message in messages:
            writer.write(encode(message))
        writer.write(encode({"type": "noop"}))
        while True:  # until the pipe thread has read up to the noop (5 s each at most)
            item = channel.inbox.get(timeout=5)
            if item and item.get("type") == "noop":
                return channel.should_stop()

    assert after({"type": "job", "spec": {}}) is False
    assert after({"type": "park"}) is True  # the running job stops between frames
    assert after({"type": "job", "spec": {}}) is False  # the next job (after resume) runs
    assert not channel.stopping.is_set()  # parked, not stopping: the worker stays up


_PIPES: list[Any] = []


# --------------------------------------------------------------------------- queue order


def test_after_a_sigterm_restart_the_stopped_job_runs_before_an_older_retry(
        tmp_path: Path) -> None:
    from nstd.errors import Interrupted, TransientError

    site = SteppedSite(tmp_path)

    def act(request: Any, kwargs: dict[str, Any]) -> None:
        if request.source.name == "early.png" and len(site.ran) == 1:
            raise TransientError("the outbox is full")  # retried in 10 s
        if request.source.name == "long.png":
            site.daemon.request_stop()  # what SIGTERM does
            assert kwargs["should_stop"]()
            raise Interrupted("stopped before frame 3 of 9")

    site.runner.action = act
    site.start()
    site.queue_files("early.png", "long.png")
    site.step()
    assert site.ran == ["early.png", "long.png"]
    site.daemon.stop()
    site.daemon = site.new_daemon()  # the restart, after early.png's backoff ended
    site.clock.t += 60
    site.runner.action = None
    site.start()
    site.step()
    assert site.ran[2:] == ["long.png"]  # not early.png, although older and due
    site.step()
    assert site.ran[2:] == ["long.png", "early.png"]


# --------------------------------------------------------------------------- a real daemon


def test_nstd_pause_parks_a_running_video_between_frames_and_resume_continues_it(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    import shutil

    from nstd.testing.media import write_test_clip
    from nstd.testing.site import Site, kill_all, listing

    site = Site.create(tmp_path, vgg_weights_path)
    try:
        daemon = site.start("run", failpoints="video.frame=sleep0.3")  # a slow frame
        clip = tmp_path / "clip.mp4"
        write_test_clip(clip, frames=FRAMES, size=(32, 24), rate=Fraction(12), seed=0)
        shutil.move(clip, site.inbox / "v.mp4")
        # One frame stored: 9 slow frames left, about 3 s, against a pause noticed within
        # about 1 s (the loop's heartbeat while a job runs).
        daemon.wait_for(lambda: len(list(site.work.rglob("frames/*.json"))) >= 1, 60,
                        "a stored frame")
        started = time.monotonic()
        assert main(["pause", "--config", str(site.config_path)]) == 0
        daemon.wait_for(lambda: [j["state"] for j in site.jobs()] == ["queued"], 30,
                        "v.mp4 back in the queue")
        parked_after = time.monotonic() - started
        (job,) = site.jobs()
        assert job["state"] == "queued" and job["attempts"] == 0
        stored = len(list(site.work.rglob("frames/*.json")))
        assert 1 <= stored < FRAMES  # kept, not finished
        assert main(["resume", "--config", str(site.config_path)]) == 0
        daemon.wait_log("resuming,", 30)
        daemon.wait_for(lambda: listing(site.done) == ["v.mp4"], 60, "v.mp4 done")
        assert "paused (nstd pause)" in daemon.log() and "working again" in daemon.log()
        (job,) = site.jobs()
        assert job["state"] == "done" and job["attempts"] == 1
        print(f"\nnstd pause -> video parked in {parked_after:.2f} s, "
              f"{stored}/{FRAMES} frames kept")
        assert daemon.stop() == 0
    finally:
        kill_all()

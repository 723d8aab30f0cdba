"""The supervisor and its worker processes, as real `nstd run` subprocesses.

Each test is one rule of the supervisor/worker split (nstd.daemon.supervisor): a worker's
death, a poison file, a wedged worker, the watchdog during a slow plan pass, a source swapped
for a symlink after claim, two workers at once. Waits poll with deadlines; nothing sleeps for a
guessed time. Figures measured along the way are printed (pytest -s shows them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from nstd.daemon.ledger import Ledger
from nstd.testing.media import write_test_clip, write_test_image
from nstd.testing.site import Site, kill_all, listing

FRAMES = 12


@pytest.fixture(autouse=True)
def _no_leftover_daemons():
    yield
    kill_all()


def drop_clip(site: Site, rel: str, frames: int = FRAMES, seed: int = 0) -> Path:
    path = site.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = site.root / f"clip-{seed}.mp4"
    write_test_clip(tmp, frames=frames, size=(32, 24), rate=Fraction(12), seed=seed)
    shutil.move(tmp, path)
    return path


def worker_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)", log)]


def job_states(site: Site) -> list[str]:
    """The ledger's job states, oldest job first."""
    return [j["state"] for j in site.jobs()]


def frame_count(path: Path) -> int:
    from nstd.media.container import count_frames

    return count_frames(path)


def test_the_supervisor_imports_no_torch() -> None:
    code = ("import sys, nstd.cli.daemon, nstd.daemon.supervisor, nstd.daemon.pool, "
            "nstd.daemon.jobspec; print(sorted(m for m in ('torch', 'nstd.daemon.worker', "
            "'nstd.pipeline', 'nstd.job') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"


def test_a_worker_killed_mid_frame_is_restarted_and_the_video_resumes(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, video={"frame_iterations": 20})
    started = time.monotonic()
    daemon = site.start("run")
    ready = time.monotonic() - started
    drop_clip(site, "mosaic/v.mp4")
    daemon.wait_for(lambda: len(list(site.work.rglob("frames/*.json"))) >= 2, 60,
                    "two stored frames")
    pid = worker_pids(daemon.log())[-1]
    os.kill(pid, signal.SIGKILL)
    died = time.monotonic()
    daemon.wait_for(lambda: len(worker_pids(daemon.log())) == 2, 30, "a new worker")
    daemon.wait_log("resuming,", 30)
    resumed = time.monotonic() - died
    daemon.wait_for(lambda: listing(site.done) == ["mosaic/v.mp4"], 60, "the video done")
    log = daemon.log()
    assert "worker 1 died (signal 9 (SIGKILL)) on mosaic/v.mp4" in log
    assert re.search(rf"resuming, [1-9]\d* of {FRAMES} frames already stored", log)
    assert listing(site.outbox) == ["mosaic/v.mosaic.mp4"]
    assert frame_count(site.outbox / "mosaic" / "v.mosaic.mp4") == FRAMES
    (job,) = site.jobs()
    assert job["state"] == "done" and job["attempts"] == 2
    assert daemon.alive() and log.count("ready: watching") == 1  # never restarted
    print(f"\nsupervisor READY after {ready:.2f} s (process start included), "
          f"RSS {daemon.rss_kb()} kB; worker death -> its job running again "
          f"(resuming) {resumed:.2f} s")
    assert daemon.stop() == 0


def test_a_poison_file_fails_after_max_attempts_and_good_files_go_on(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"max_attempts": 3})
    # Every worker that decodes a video segfaults; images decode through another path.
    daemon = site.start("run", failpoints="worker.decode=segv")
    drop_clip(site, "poison.mp4")
    daemon.wait_for(lambda: any("SIGSEGV" in (j["error"] or "") for j in site.jobs()), 60,
                    "a worker died on poison.mp4")
    write_test_image(site.inbox / "good.png", size=(24, 16), seed=1)
    daemon.wait_for(lambda: (site.failed / "poison.mp4.error.txt").exists(), 60,
                    "poison.mp4 in failed/")
    daemon.wait_for(lambda: (site.done / "good.png").exists(), 60, "good.png done")
    report = (site.failed / "poison.mp4.error.txt").read_text()
    assert "the worker process died (signal 11 (SIGSEGV)) on this file 3 times" in report
    assert "attempts: 3" in report
    jobs = {j["source"]: j for j in site.jobs()}
    assert jobs["poison.mp4"]["state"] == "failed" and jobs["poison.mp4"]["attempts"] == 3
    assert jobs["good.png"]["state"] == "done"
    assert listing(site.outbox) == ["good.mosaic.png"]
    assert daemon.log().count("ready: watching") == 1 and daemon.alive()
    assert daemon.stop() == 0


def test_a_wedged_worker_is_killed_after_stall_seconds_and_the_job_retried(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"stall_seconds": 3.0})
    daemon = site.start("run", failpoints="worker.job=hang", NSTD_FAILPOINTS_WORKERS="first")
    write_test_image(site.inbox / "a.png", size=(24, 16), seed=1)
    daemon.wait_log("failpoint worker.job: hang", 60)
    hung = time.monotonic()
    daemon.wait_log("has not reported for", 30)
    killed_after = time.monotonic() - hung
    daemon.wait_for(lambda: listing(site.done) == ["a.png"], 60, "a.png done")
    assert killed_after >= 2.5  # not before daemon.stall_seconds (less the log's latency)
    assert "killed as stalled" in daemon.log()
    (job,) = site.jobs()
    assert job["state"] == "done" and job["attempts"] == 2
    assert listing(site.outbox) == ["a.mosaic.png"]
    assert daemon.stop() == 0


def test_watchdog_pings_go_on_through_a_slow_plan_pass(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    pings: list[float] = []
    other: list[str] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                data = sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                if line == "WATCHDOG=1":
                    pings.append(time.monotonic())
                else:
                    other.append(line)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    watchdog_sec = 2.0  # WatchdogSec
    site = Site.create(tmp_path, vgg_weights_path, daemon={"stall_seconds": 30.0})
    # 12 frames x 0.5 s: the plan pass takes 6 s, 3x the watchdog interval.
    daemon = site.start("run", failpoints="plan.frame=sleep0.5",
                        NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC=str(int(watchdog_sec * 1e6)))
    try:
        drop_clip(site, "v.mp4")
        daemon.wait_for(lambda: job_states(site) == ["running"], 30, "v.mp4 started")
        plan_started = time.monotonic()
        daemon.wait_for(lambda: listing(site.done) == ["v.mp4"], 90, "v.mp4 done")
        finished = time.monotonic()
    finally:
        done.set()
        thread.join(2)
        sock.close()
    assert finished - plan_started >= 3 * watchdog_sec / 2 * 2  # the pass really was slow
    during = [t for t in pings if plan_started - 1 <= t <= finished]
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert "READY=1" in other and gaps
    print(f"\nlargest WATCHDOG=1 gap during a {finished - plan_started:.1f} s slowed plan "
          f"pass: {max(gaps):.2f} s (limit {watchdog_sec / 2:.1f} s)")
    assert max(gaps) <= watchdog_sec / 2
    assert listing(site.outbox) == ["v.mosaic.mp4"]
    assert frame_count(site.outbox / "v.mosaic.mp4") == FRAMES
    assert daemon.stop() == 0


def test_a_symlink_swapped_in_after_claim_is_never_read(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path)
    elsewhere = tmp_path / "secret.png"
    write_test_image(elsewhere, size=(16, 32), seed=9)  # portrait: the source is landscape
    daemon = site.start("run", failpoints="worker.job=sleep2")
    source = site.inbox / "a.png"
    write_test_image(source, size=(24, 16), seed=1)
    # The job is "running" in the ledger from its claim, but its source is linked into the
    # work folder only when it goes to a worker: the log line says that moment.
    daemon.wait_log("started a.png", 30)
    source.unlink()
    source.symlink_to(elsewhere)
    daemon.wait_for(lambda: job_states(site) == ["done"], 60, "a.png done")
    from nstd.media.images import read_image

    out = read_image(site.outbox / "a.mosaic.png", 10_000)
    assert out.width > out.height  # made from the file that was checked, not the link
    daemon.wait_log("source replaced, left alone", 10)
    assert source.is_symlink() and listing(site.done) == []
    assert elsewhere.is_file()
    assert daemon.stop() == 0


def test_two_workers_take_two_files_at_once(tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"workers": 2},
                       video={"frame_iterations": 6})
    daemon = site.start("run")
    daemon.wait_for(lambda: daemon.log().count(" ready (device cpu)") == 2, 60,
                    "two workers ready")
    drop_clip(site, "a.mp4", seed=1)
    drop_clip(site, "b.mp4", seed=2)
    daemon.wait_for(lambda: len(listing(site.done)) == 2, 90, "both done")
    assert "1 thread)" in daemon.log()  # 2 cores shared out: 2 workers x 1 torch thread
    jobs = site.jobs()
    assert max(j["started"] for j in jobs) < min(j["finished"] for j in jobs)  # side by side
    assert listing(site.outbox) == ["a.mosaic.mp4", "b.mosaic.mp4"]
    for name in ("a.mosaic.mp4", "b.mosaic.mp4"):
        assert frame_count(site.outbox / name) == FRAMES
    assert daemon.stop() == 0


def test_recover_fails_a_job_that_crashed_max_attempts_times(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with Ledger.open(path) as ledger:
        ledger.enqueue("a.mp4", "k", "mosaic", {}, 1.0)
        for i in range(3):
            assert ledger.claim(10.0 * (i + 1), 60) is not None  # ... and the process dies
            ledger.recover(10.0 * (i + 1) + 1, max_attempts=3)
        job = ledger.find("a.mp4")
        assert job.state == "failed" and job.attempts == 3
        assert "3 times" in job.error
        assert [j.id for j in ledger.interrupted_failures] == [job.id]
        assert ledger.claim(100.0, 60) is None  # not requeued for ever

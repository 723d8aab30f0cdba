"""Faults: kill -9 at every point that matters, a full disk, a read-only outbox, files and
folders pulled away, a lost ledger, CUDA out of memory.

Every case ends in a defined state (output in the outbox, source in failed/ with a reason, or
left alone and logged), the daemon keeps running, and no source is ever lost or altered
(checksums before and after). Crashes and I/O errors are injected with `nstd.faults`
failpoints; the real-filesystem variants (a tmpfs that fills up, a read-only bind mount) run
where the test may mount (root with CAP_SYS_ADMIN) and are skipped otherwise.

In-process tests drive `Daemon.step(now)` with a fake clock (`nstd.testing.stepped`); the
rest run `nstd run` in a subprocess (`nstd.testing.site`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nstd import faults
from nstd.cli.main import main
from nstd.config import parse_config
from nstd.daemon.ledger import ledger_path
from nstd.errors import InputError, OutOfMemoryError
from nstd.job import JobRequest
from nstd.media.images import read_image, write_image
from nstd.testing.media import write_test_clip, write_test_image
from nstd.testing.site import Site, checksums, kill_all, listing, temp_files
from nstd.testing.stepped import SETTLE, SteppedSite

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    faults.configure(None)
    yield
    faults.configure(None)
    kill_all()  # a failed test leaves no daemon behind


# --------------------------------------------------------------------------- the failpoints


def test_failpoints_are_inert_unless_armed_and_count_hits() -> None:
    faults.failpoint("publish.before_rename")  # not armed: nothing happens
    faults.configure("x=enospc@2*2; y=oom")
    faults.failpoint("x")  # 1st hit: before @2
    for _ in range(2):
        with pytest.raises(OSError, match="No space left") as info:
            faults.failpoint("x")
        assert info.value.errno == 28
    faults.failpoint("x")  # *2 used up
    with pytest.raises(OutOfMemoryError):
        faults.failpoint("y")
    faults.failpoint("z")  # not armed
    for bad in ("x", "x=explode", "x=kill@two", "=kill"):
        with pytest.raises(ValueError, match="NSTD_FAILPOINTS"):
            faults.parse(bad)


def test_a_kill_failpoint_is_a_real_sigkill() -> None:
    env = {**os.environ, "NSTD_FAILPOINTS": "here=kill"}
    result = subprocess.run([sys.executable, "-c", "from nstd.faults import failpoint; "
                             "failpoint('elsewhere'); failpoint('here'); print('survived')"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == -9 and "survived" not in result.stdout
    assert "failpoint here: kill" in result.stderr


# --------------------------------------------------------------------------- disk full, read-only


@pytest.mark.parametrize(("spec", "message"), [  # ENOSPC: tests/test_disk_space.py
    ("publish.before_rename=erofs*2", "Read-only file system"),
    ("publish.before_rename=eacces*1", "Permission denied"),
])
def test_io_errors_while_publishing_are_retried_and_publish_nothing_partial(
        tmp_path: Path, spec: str, message: str) -> None:
    rig = SteppedSite(tmp_path)
    rig.start()
    path = rig.drop("a.png")
    before = checksums(rig.inbox)
    faults.configure(spec)
    rig.step()
    assert rig.settle()
    attempts = 0
    while rig.job("a.png").state != "done":
        job = rig.job("a.png")
        # Failed: waiting for a retry, nothing published, the source untouched.
        assert job.state == "queued" and message in job.error
        assert listing(rig.outbox) == [] and checksums(rig.inbox) == before
        attempts += 1
        assert attempts <= 2
        assert rig.step(60)
    assert attempts >= 1 and rig.job("a.png").attempts == attempts + 1
    assert listing(rig.outbox) == ["a.mosaic.png"] and not path.exists()
    assert checksums(rig.done) == before


def test_a_ledger_that_cannot_be_written_pauses_then_finishes_without_recomputing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = SteppedSite(tmp_path)
    rig.start()
    rig.drop("a.png")
    rig.step()
    real_complete = rig.ledger.complete
    calls = []

    def full(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real_complete(*args)

    rig.ledger.complete = full  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="nstd.daemon"):
        assert not rig.settle()  # the output is published, "done" could not be recorded
        assert "cannot write the job ledger" in caplog.text
        assert rig.job("a.png").state == "running"
        assert not rig.step(0.5)  # still pausing
        assert rig.step(1.0)
    assert "job 1 is back in the queue" in caplog.text
    assert "already published; finishing" in caplog.text
    assert len(rig.runner.requests) == 1  # not computed again
    assert rig.job("a.png").state == "done"
    assert listing(rig.outbox) == ["a.mosaic.png"] and listing(rig.done) == ["a.png"]


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs at tmp_path/site/data; skipped where this test may not mount."""
    data = tmp_path / "site" / "data"
    data.mkdir(parents=True)
    if shutil.which("mount") is None or not _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                                  str(data)):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the injected "
                    "ENOSPC tests cover the same paths")
    try:
        yield data
    finally:
        _umount(data)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full (to the last block); returns it."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 4096, 512):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_the_disk_fills_up_during_a_video_then_space_returns(
        small_disk: Path, vgg_weights_path: Path) -> None:
    # No reserve on a 4 MiB disk (daemon.min_free_mb): the job starts, then the disk fills.
    site = Site.create(small_disk.parent, vgg_weights_path,
                       daemon={"max_attempts": 10, "retry_backoff_seconds": 0.3,
                               "min_free_mb": 0})
    daemon = site.start("run")
    (site.inbox / "mosaic").mkdir()
    # Slow frames, so that the disk fills while frames are being made.
    (site.inbox / "mosaic" / "v.mp4.yaml").write_text("video:\n  frame_iterations: 25\n")
    write_test_clip(site.root / "v.mp4", frames=16, size=(32, 24), rate=Fraction(8))
    shutil.copy(site.root / "v.mp4", site.inbox / "mosaic" / "v.mp4")
    sources = checksums(site.inbox)
    daemon.wait_for(lambda: len(list(site.work.glob("*/store/frames/*.json"))) >= 2, 60,
                    "two stored frames")
    filler = fill(small_disk)
    daemon.wait_for(lambda: any(m in daemon.log() for m in (
        "No space left", "no space left", "disk is full")), 30, "the full disk noticed")
    time.sleep(1.0)
    assert daemon.alive()
    assert [p for p in listing(site.outbox) if not p.startswith(".")] == []  # nothing partial
    assert checksums(site.inbox) == sources
    filler.unlink()
    daemon.wait_for(lambda: (site.done / "mosaic" / "v.mp4").exists(), 90, "v.mp4 done")
    assert listing(site.outbox) == ["mosaic/v.mosaic.mp4"]
    from nstd.media.container import count_frames

    assert count_frames(site.outbox / "mosaic" / "v.mosaic.mp4") == 16
    assert checksums(site.done) == sources
    assert listing(site.work) == [] and temp_files(site.root / "data") == []
    assert daemon.stop() == 0


@pytest.fixture()
def bind_mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        _umount(path)


def test_a_read_only_outbox_makes_jobs_wait_until_it_is_writable(
        tmp_path: Path, vgg_weights_path: Path, bind_mounts: list[Path]) -> None:
    site = Site.create(tmp_path, vgg_weights_path,
                       daemon={"max_attempts": 10, "retry_backoff_seconds": 0.3})
    daemon = site.start("run")
    outbox = site.outbox
    if shutil.which("mount") is not None and _mount("--bind", str(outbox), str(outbox)):
        bind_mounts.append(outbox)
    if not bind_mounts or not _mount("-o", "remount,bind,ro", str(outbox)):
        pytest.skip("cannot make a read-only bind mount here (needs root with CAP_SYS_ADMIN);"
                    " test_io_errors_while_publishing_... injects EROFS instead")
    write_test_image(site.inbox / "a.png", size=(24, 16), seed=1)
    sources = checksums(site.inbox)
    daemon.wait_for(lambda: any("Read-only file system" in (j["error"] or "")
                                for j in site.jobs()), 60, "the read-only outbox noticed")
    assert listing(outbox) == [] and checksums(site.inbox) == sources
    _umount(outbox)
    bind_mounts.clear()
    daemon.wait_for(lambda: (site.done / "a.png").exists(), 30, "a.png done")
    assert listing(outbox) == ["a.mosaic.png"] and checksums(site.done) == sources
    assert daemon.alive() and daemon.stop() == 0


# --------------------------------------------------------------------------- things pulled away


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_source_removed_or_replaced_after_it_was_queued(tmp_path: Path, change: str) -> None:
    rig = SteppedSite(tmp_path)
    rig.start()
    path = rig.drop("a.png", seed=1)
    rig.step()
    rig.clock.t += SETTLE + 0.01
    rig.daemon.intake(rig.clock.t, rig.clock.t)  # queued, not claimed yet
    assert rig.job("a.png").state == "queued"
    if change == "removed":
        path.unlink()
    else:
        write_test_image(path, size=(30, 20), seed=2)  # new bytes, no event yet
    new = checksums(rig.inbox)
    assert rig.step()  # the queued job is dropped, not run on the wrong bytes
    assert rig.runner.requests == []
    rig.settle()
    rig.step(SETTLE)
    if change == "removed":
        assert rig.ledger.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0}
        assert listing(rig.outbox) == []
    else:  # the replacement is a job of its own, processed once
        assert len(rig.runner.requests) == 1
        assert listing(rig.outbox) == ["a.mosaic.png"] and checksums(rig.done) == new


def test_the_inbox_removed_and_recreated_is_watched_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = SteppedSite(tmp_path)
    rig.start()
    with caplog.at_level(logging.INFO, logger="nstd.daemon"):
        shutil.rmtree(rig.inbox)
        rig.daemon.events.put(rig.inbox)  # what the handler sends on the folder's deletion
        assert not rig.step()
        assert "is gone; waiting for it" in caplog.text
        assert rig.daemon.idle_timeout(rig.clock.t, rig.clock.t) <= 1.0  # polled while gone
        assert not rig.step(5)
        assert not rig.inbox.exists()  # waited for, never re-created by the daemon
        rig.inbox.mkdir()
        write_test_image(rig.inbox / "a.png", size=(24, 16))  # no event: the watch is dead
        rig.step(1.01)
        assert "is back; watching it again" in caplog.text
        assert rig.settle()
    assert listing(rig.outbox) == ["a.mosaic.png"]


def test_the_inbox_removed_and_recreated_e2e(tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"rescan_seconds": 600})
    daemon = site.start("run")
    shutil.rmtree(site.inbox)
    daemon.wait_log("is gone; waiting for it", 10)
    site.inbox.mkdir()
    daemon.wait_log("is back; watching it again", 10)
    write_test_image(site.inbox / "a.png", size=(24, 16))  # inotify again (no rescan for 600 s)
    daemon.wait_for(lambda: (site.done / "a.png").exists(), 30, "a.png done")
    assert listing(site.outbox) == ["a.mosaic.png"]
    assert daemon.stop() == 0


def test_the_ledger_deleted_while_stopped_is_rebuilt_from_the_folders(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = SteppedSite(tmp_path)

    def bad(request: JobRequest, _: dict[str, Any]) -> None:
        if request.source.name == "bad.png":
            raise InputError("bad.png is truncated or corrupt")

    rig.runner.action = bad
    rig.start()
    rig.drop("good.png", seed=1)
    rig.drop("mosaic/deep/bad.png", seed=2)
    rig.step()
    rig.settle()
    rig.step()
    rig.step(3 * SETTLE + 0.01)  # an unreadable file is held a while before failed/
    assert listing(rig.outbox) == ["good.mosaic.png"]
    # Stopped; the ledger is deleted; an old work folder and a file that was published but
    # not yet moved (killed, then the ledger lost too) are left behind.
    rig.ledger.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger_path(rig.config.daemon.state)}{suffix}").unlink(missing_ok=True)
    (rig.work / "7" / "frames").mkdir(parents=True)
    write_test_image(rig.inbox / "c.png", size=(24, 16), seed=3)
    write_image(rig.outbox / "c.mosaic.png", np.zeros((8, 8, 3), np.float32))
    with caplog.at_level(logging.INFO, logger="nstd.daemon"):
        rig.restart(ledger=True)
    assert "rebuilt 1 done and 1 failed job from" in caplog.text
    good, bad_job = rig.job("good.png"), rig.job("mosaic/deep/bad.png")
    assert good.state == "done" and good.output == str(rig.outbox / "good.mosaic.png")
    assert bad_job.state == "failed" and "truncated or corrupt" in bad_job.error
    assert not (rig.work / "7").exists()
    # What cannot be known: c.png's existing output is not tied to it, so c.png is done again
    # under the next free name (documented).
    rig.settle()
    assert listing(rig.outbox) == ["c.mosaic-1.png", "c.mosaic.png", "good.mosaic.png"]
    # nstd retry finds the rebuilt failed job.
    assert main(["retry", "bad.png", "--config", str(rig.config_file())]) == 0
    assert "requeued 1 job" in capsys.readouterr().out
    rig.runner.action = None
    assert rig.step()
    assert "mosaic/deep/bad.mosaic.png" in listing(rig.outbox)


# --------------------------------------------------------------------------- out of memory


def test_cuda_out_of_memory_inside_the_engine_is_retried_with_a_smaller_budget(
        tmp_path: Path, vgg_weights_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from nstd.daemon.engines import EngineCache

    model = parse_config({"model": {"weights": str(vgg_weights_path), "device": "cpu"}}).model
    rig = SteppedSite(tmp_path, engines=EngineCache.load(model), real=True,
              retry_backoff_seconds=1.0)
    rig.start()
    rig.drop("a.png", size=(48, 32))
    faults.configure("job.heartbeat=cuda_oom*1")  # torch.cuda.OutOfMemoryError in Stylizer.run
    rig.step()
    with caplog.at_level(logging.INFO, logger="nstd.daemon"):
        rig.settle()
        assert rig.job("a.png").state == "queued"
        rig.step(1.01)
    assert "out of memory with model.auto_memory_share 0.5; the next attempt uses 0.25" \
        in caplog.text
    assert "out of GPU memory" in caplog.text
    job = rig.job("a.png")
    assert job.state == "done" and job.attempts == 2
    assert job.settings == {"model": {"auto_memory_share": 0.25}}
    out = read_image(rig.outbox / "a.mosaic.png", 10_000)
    assert (out.width, out.height) == (32, 21)  # the size asked for, not a smaller one


def test_a_raw_cuda_oom_outside_the_engine_is_retried_with_a_smaller_budget(
        tmp_path: Path) -> None:
    import torch

    rig = SteppedSite(tmp_path)

    def oom_once(request: JobRequest, _: dict[str, Any]) -> None:
        if len(rig.runner.requests) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    rig.runner.action = oom_once
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    rig.step(10.01)
    assert [r.config.style.max_side for r in rig.runner.requests] == [32, 32]
    assert [r.config.model.auto_memory_share for r in rig.runner.requests] == [0.5, 0.25]
    assert rig.job("a.png").state == "done"


# --------------------------------------------------------------------------- kill -9


VIDEO_FRAMES = 12

A, V = "a.mosaic.png", "mosaic/v.mosaic.mp4"

# (failpoint, files dropped while the daemon is down before this run, the visible outbox
# right after the kill, whether a hidden temp file must be there: None = it depends on how
# far the encoder thread got, which opens its file at its first packet). Each run is killed there
# (kill -9) and the next run starts on whatever was left. Order matters: each point is
# reached by the first job that gets there. Points inside a worker (publish.*, video.frame)
# kill the worker, and "daemon.worker_died" kills the supervisor when it notices: the whole
# service dies there, as on a power cut. A video is published twice: the encoder renames
# its finished file to the job's temp name (@1), the job renames that to the output (@2).
# The chain is cut into groups, each on fresh folders and ended by a clean run that must
# finish every job exactly once: every run starts a supervisor and a worker (a few seconds
# each on a loaded machine), and one test for the whole chain took close to a minute.
W = ";daemon.worker_died=kill"  # a worker-side kill takes the supervisor down too
ChainRun = tuple[str, tuple[str, ...], list[str], bool | None]
KILL_CHAINS: dict[str, list[ChainRun]] = {
    "image-before-publish": [
        ("intake.settled=kill", ("a.png", "a.png.yaml"), [], False),  # settled, not queued
        ("ledger.claim=kill", (), [], False),  # inside the claim transaction
        ("daemon.claimed=kill", (), [], False),  # claimed, nothing done yet
    ],
    "image-publish": [
        ("publish.before_rename=kill" + W, ("a.png", "a.png.yaml"), [], True),  # complete
        # under its temp name
        ("publish.after_link=kill" + W, (), [A], True),  # final name linked, temp name there
        ("daemon.completed=kill", (), [A], False),  # marked done, source not moved
        ("outcome.sidecar_moved=kill", (), [A], False),  # sidecar in done/, source in inbox
    ],
    "failed-and-video-frames": [
        ("daemon.failed_marked=kill", ("bad.png",), [], False),  # failed, source not moved
        ("video.frame=kill@6" + W, ("mosaic/v.mp4",), [], None),  # between frames, mid-encode
        (f"video.frame=kill@{VIDEO_FRAMES}" + W, (), [], None),  # last frame; not flushed
    ],
    "video-publish": [
        ("publish.before_rename=kill" + W, ("mosaic/v.mp4",), [], True),  # encoded, before
        # the encoder's rename
        ("publish.before_rename=kill@2" + W, (), [], True),  # the video's final rename
        ("publish.after_link=kill@2" + W, (), [V], True),
        ("daemon.completed=kill", (), [V], False),  # before the video's move to done/
    ],
}


def drop_chain_file(site: Site, rel: str) -> None:
    path = site.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if rel == "a.png":
        write_test_image(path, size=(24, 16), seed=1)
    elif rel == "a.png.yaml":
        path.write_text("style:\n  iterations: 3\n")
    elif rel == "bad.png":
        path.write_text("not an image at all\n")
    else:
        write_test_clip(site.root / "clip.mp4", frames=VIDEO_FRAMES, size=(32, 24),
                        rate=Fraction(12))
        shutil.move(site.root / "clip.mp4", path)


def check_outbox_complete(site: Site) -> None:
    """Every visible file in the outbox is a complete output (temp files are hidden)."""
    from nstd.media.container import count_frames

    for rel in listing(site.outbox):
        if Path(rel).name.startswith("."):
            continue
        if rel.endswith(".mp4"):
            assert count_frames(site.outbox / rel) == VIDEO_FRAMES, rel
        else:
            read_image(site.outbox / rel, 10_000)


def _expected_output(source: str) -> str:
    return V if source.endswith(".mp4") else A


@pytest.mark.parametrize("group", list(KILL_CHAINS))
def test_kill_9_at_every_point_then_restart_finishes_every_job_exactly_once(
        tmp_path: Path, vgg_weights_path: Path, group: str) -> None:
    chain = KILL_CHAINS[group]
    site = Site.create(tmp_path, vgg_weights_path, daemon={"max_attempts": 20})
    sources: dict[str, str] = {}
    dropped = [rel for _, files, _, _ in chain for rel in files]
    for i, (spec, files, visible, temp) in enumerate(chain):
        for rel in files:
            drop_chain_file(site, rel)
        sources.update(checksums(site.inbox))
        daemon = site.start(f"run{i}", failpoints=spec, wait_ready=False)
        rc = daemon.wait_exit(60)
        point = spec.split("=")[0]
        assert rc == -9 and f"failpoint {point}: kill" in daemon.log(), \
            f"run {i} ({spec}) was not killed there (exit {rc}):\n{daemon.tail()}"
        assert [p for p in listing(site.outbox) if not Path(p).name.startswith(".")] == \
            visible, f"after {spec}"
        if temp is not None:
            assert bool(temp_files(site.outbox)) == temp, f"after {spec}"
        check_outbox_complete(site)
        # No source lost or altered: each is somewhere, byte for byte.
        found = {**checksums(site.inbox), **checksums(site.done), **checksums(site.failed)}
        assert set(sources.values()) <= set(found.values()), f"after {spec}"
    good = sorted(rel for rel in dropped if rel != "bad.png")
    jobs_done = [rel for rel in good if not rel.endswith(".yaml")]
    last = site.start("final")
    last.wait_for(lambda: len(listing(site.done)) == len(good) and not listing(site.inbox), 90,
                  "every job finished")
    assert last.stop() == 0
    # Each output once, no -1.
    assert listing(site.outbox) == sorted(_expected_output(rel) for rel in jobs_done)
    check_outbox_complete(site)
    assert listing(site.done) == good
    if "bad.png" in dropped:
        assert listing(site.failed) == ["bad.png", "bad.png.error.txt"]
        assert "inbox/bad.png is not a PNG image" in (site.failed / "bad.png.error.txt").read_text()
    else:
        assert listing(site.failed) == []
    final = {**checksums(site.done), **checksums(site.failed)}
    assert {rel: final[rel] for rel in sources} == sources
    assert listing(site.work) == [] and listing(site.inbox) == []
    assert temp_files(site.root / "data") == []
    jobs = site.jobs()
    assert sorted((j["source"], j["state"]) for j in jobs) == sorted(
        [(rel, "done") for rel in jobs_done]
        + ([("bad.png", "failed")] if "bad.png" in dropped else []))
    if any(spec.startswith("video.frame=") for spec, *_ in chain):
        log = "".join((site.root / f"run{i}.log").read_text() for i in range(len(chain)))
        # Frames stored before the kills were not computed again (they are stored behind the
        # engine, so how many of the 6 made it to disk varies).
        assert re.search(r"resuming, [1-9]\d* of 12 frames already stored", log)


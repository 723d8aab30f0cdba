"""The SQLite job ledger: dedupe, atomic claims, leases and recovery, backoff, retry, and the
claim order after a stop, a crash or `nstd retry`."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from nstd.daemon.ledger import (
    MAX_BACKOFF_SECONDS,
    SCHEMA_VERSION,
    DaemonLock,
    Ledger,
    content_key,
    ledger_path,
)
from nstd.errors import InputError, NstdError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return ledger_path(tmp_path / "state")


@pytest.fixture
def ledger(db_path: Path):
    with Ledger.open(db_path) as ledger:
        yield ledger


def test_open_creates_folder_schema_and_wal(db_path: Path) -> None:
    with Ledger.open(db_path):
        pass
    assert db_path.is_file()
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.close()
    with Ledger.open(db_path) as again:  # reopening is idempotent
        assert again.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0}


def test_open_refuses_newer_schema_and_garbage(tmp_path: Path, db_path: Path) -> None:
    with Ledger.open(db_path):
        pass
    db = sqlite3.connect(db_path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(NstdError, match="newer"):
        Ledger.open(db_path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(NstdError, match="move it aside"):
        Ledger.open(junk)
    with pytest.raises(NstdError, match="cannot be used"):
        Ledger.open(junk, readonly=True)


def test_readonly_open_reads_while_writer_holds_a_transaction(db_path: Path) -> None:
    with pytest.raises(NstdError, match="no job ledger"):
        Ledger.open(db_path, readonly=True)
    with Ledger.open(db_path) as writer:
        writer.enqueue("a.png", "k1", "mosaic", {}, now=1.0)
        reader = Ledger.open(db_path, readonly=True)
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a write in progress: WAL readers are not blocked
        other.execute("UPDATE jobs SET style = 'other'")
        assert reader.counts()["queued"] == 1
        assert reader.active()[0].style == "mosaic"
        other.execute("COMMIT")
        other.close()
        assert reader.active()[0].style == "other"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.enqueue("b.png", "k2", "mosaic", {}, now=2.0)
        assert [j.source for j in reader.active()] == ["a.png"]
        reader.close()


def test_enqueue_dedupes_same_path_and_key(ledger: Ledger) -> None:
    job = ledger.enqueue("sub/a.png", "k1", "mosaic", {"style": {"iterations": 5}}, now=10.0)
    assert job is not None
    assert (job.source, job.state, job.attempts, job.name) == ("sub/a.png", "queued", 0, "a.png")
    assert job.settings == {"style": {"iterations": 5}}
    assert job.created == 10.0
    assert ledger.enqueue("sub/a.png", "k1", "mosaic", {}, now=11.0) is None  # queued
    ledger.claim(now=12.0, lease_seconds=60)
    assert ledger.enqueue("sub/a.png", "k1", "mosaic", {}, now=13.0) is None  # running
    ledger.complete(job.id, "out/a.mosaic.png", now=14.0)
    assert ledger.enqueue("sub/a.png", "k1", "mosaic", {}, now=15.0) is None  # done
    # Identical bytes under another name: a job of its own.
    other = ledger.enqueue("sub/b.png", "k1", "mosaic", {}, now=16.0)
    assert other is not None and other.id != job.id
    # Same name, new bytes (the file was replaced): a new job.
    replaced = ledger.enqueue("sub/a.png", "k2", "mosaic", {}, now=17.0)
    assert replaced is not None
    assert ledger.counts() == {"queued": 2, "running": 0, "done": 1, "failed": 0}


def test_replacing_a_queued_file_drops_the_stale_job(ledger: Ledger) -> None:
    old = ledger.enqueue("a.png", "k1", "mosaic", {}, now=1.0)
    new = ledger.enqueue("a.png", "k2", "mosaic", {}, now=2.0)
    assert old is not None and new is not None
    assert ledger.get(old.id) is None
    assert [j.id for j in ledger.active()] == [new.id]
    assert ledger.find("a.png") == new
    assert ledger.find("a.png", "k1") is None


def test_failed_job_does_not_block_a_new_drop(ledger: Ledger) -> None:
    job = ledger.enqueue("a.png", "k1", "mosaic", {}, now=1.0)
    ledger.claim(now=2.0, lease_seconds=60)
    ledger.fail(job.id, "bad", now=3.0, permanent=True, max_attempts=3, backoff_seconds=1)
    again = ledger.enqueue("a.png", "k1", "mosaic", {}, now=4.0)
    assert again is not None and again.id != job.id
    # ...and retry() will not duplicate it: the failed row is left alone.
    assert ledger.retry("a.png") == 0


def test_claim_takes_oldest_and_counts_the_attempt(ledger: Ledger) -> None:
    assert ledger.claim(now=0.0, lease_seconds=10) is None
    a = ledger.enqueue("a.png", "ka", "mosaic", {}, now=1.0)
    b = ledger.enqueue("b.png", "kb", "mosaic", {}, now=2.0)
    got = ledger.claim(now=5.0, lease_seconds=10)
    assert got is not None and got.id == a.id
    assert (got.state, got.attempts, got.lease_until, got.started) == ("running", 1, 15.0, 5.0)
    assert ledger.claim(now=5.0, lease_seconds=10).id == b.id
    assert ledger.claim(now=5.0, lease_seconds=10) is None
    assert [j.state for j in ledger.active()] == ["running", "running"]


def test_concurrent_claims_never_share_a_job(db_path: Path) -> None:
    with Ledger.open(db_path) as setup:
        for i in range(60):
            setup.enqueue(f"f{i:02d}.png", f"k{i}", "mosaic", {}, now=float(i))
    claimed: list[list[int]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            with Ledger.open(db_path) as mine:  # its own connection, as another process would
                barrier.wait()
                while (job := mine.claim(now=100.0, lease_seconds=60)) is not None:
                    claimed[slot].append(job.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    everything = [job_id for ids in claimed for job_id in ids]
    assert sorted(everything) == list(range(1, 61))  # each job exactly once
    with Ledger.open(db_path) as check:
        assert check.counts()["running"] == 60
        assert all(j.attempts == 1 for j in check.active())


def test_lease_renew_progress_complete(ledger: Ledger) -> None:
    job = ledger.enqueue("clip.mp4", "k", "mosaic", {}, now=0.0)
    ledger.claim(now=1.0, lease_seconds=30)
    assert ledger.renew(job.id, now=20.0, lease_seconds=30)
    ledger.progress(job.id, 12, 240, eta=95.5)
    running = ledger.get(job.id)
    assert (running.lease_until, running.progress_done, running.progress_total,
            running.eta_seconds) == (50.0, 12, 240, 95.5)
    ledger.complete(job.id, "clip.mosaic.mp4", now=60.0)
    done = ledger.get(job.id)
    assert (done.state, done.output, done.finished, done.lease_until) == (
        "done", "clip.mosaic.mp4", 60.0, None)
    assert not ledger.renew(job.id, now=61.0, lease_seconds=30)  # no longer running
    assert ledger.recent(5) == [done]


def test_recover_requeues_running_jobs_keeping_the_attempt(db_path: Path) -> None:
    crashed = Ledger.open(db_path)
    job = crashed.enqueue("clip.mp4", "k", "mosaic", {}, now=0.0)
    crashed.claim(now=1.0, lease_seconds=30)
    crashed.progress(job.id, 7, 100, eta=None)
    crashed.close()  # the daemon died here (no complete/fail)
    with Ledger.open(db_path) as restarted:
        assert restarted.recover(now=500.0) == 1
        back = restarted.get(job.id)
        assert (back.state, back.attempts, back.lease_until) == ("queued", 1, None)
        assert back.progress_done == 7  # kept for the status view; frames resume from disk
        again = restarted.claim(now=500.0, lease_seconds=30)
        assert (again.id, again.attempts) == (job.id, 2)
        assert restarted.recover(now=501.0) == 1
        assert restarted.recover(now=502.0) == 0


def test_transient_failures_back_off_then_fail(ledger: Ledger) -> None:
    job = ledger.enqueue("a.png", "k", "mosaic", {}, now=0.0)
    kw = {"permanent": False, "max_attempts": 3, "backoff_seconds": 10.0}
    ledger.claim(now=0.0, lease_seconds=60)
    first = ledger.fail(job.id, "CUDA out of memory", now=100.0, **kw)
    assert (first.state, first.attempts, first.not_before) == ("queued", 1, 110.0)
    assert first.error == "CUDA out of memory"
    assert ledger.claim(now=109.9, lease_seconds=60) is None  # still backing off
    assert ledger.claim(now=110.0, lease_seconds=60).attempts == 2
    second = ledger.fail(job.id, "busy", now=200.0, **kw)
    assert (second.state, second.not_before) == ("queued", 220.0)  # doubled
    ledger.claim(now=220.0, lease_seconds=60)
    third = ledger.fail(job.id, "busy", now=300.0, **kw)
    assert (third.state, third.attempts, third.finished) == ("failed", 3, 300.0)
    assert ledger.claim(now=10_000.0, lease_seconds=60) is None


def test_permanent_failure_fails_at_once_and_backoff_is_capped(ledger: Ledger) -> None:
    bad = ledger.enqueue("bad.png", "k", "mosaic", {}, now=0.0)
    ledger.claim(now=0.0, lease_seconds=60)
    failed = ledger.fail(bad.id, "not an image", now=1.0, permanent=True, max_attempts=5,
                         backoff_seconds=10.0)
    assert (failed.state, failed.attempts) == ("failed", 1)

    slow = ledger.enqueue("slow.png", "k", "mosaic", {}, now=0.0)
    for _ in range(40):
        ledger.claim(now=1e9, lease_seconds=60)
        job = ledger.fail(slow.id, "x", now=0.0, permanent=False, max_attempts=100,
                          backoff_seconds=60.0)
    assert job.state == "queued" and job.attempts == 40
    assert job.not_before == MAX_BACKOFF_SECONDS


def test_retry_by_name_path_or_all(ledger: Ledger) -> None:
    ids = {}
    for source in ("a.png", "sub/b.mp4", "other/b.mp4"):
        ids[source] = ledger.enqueue(source, "k-" + source, "mosaic", {}, now=0.0).id
        ledger.claim(now=0.0, lease_seconds=60)
        ledger.fail(ids[source], "boom", now=1.0, permanent=False, max_attempts=1,
                    backoff_seconds=1.0)
    assert ledger.counts()["failed"] == 3
    assert ledger.retry("nothing.png") == 0
    assert ledger.retry("sub/b.mp4") == 1  # a path matches only itself
    assert ledger.get(ids["sub/b.mp4"]).state == "queued"
    assert ledger.get(ids["sub/b.mp4"]).attempts == 0
    assert ledger.retry("b.mp4") == 1  # a file name matches wherever it is
    assert ledger.retry(None) == 1
    assert ledger.counts() == {"queued": 3, "running": 0, "done": 0, "failed": 0}
    assert ledger.claim(now=2.0, lease_seconds=60).attempts == 1


# --------------------------------------------------------------------------- claim order


def test_a_stopped_job_is_claimed_first_after_the_restart(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "jobs.sqlite3")
    early = ledger.enqueue("early.png", "k1", "mosaic", {}, now=10.0)
    ledger.claim(now=11.0, lease_seconds=60)
    ledger.fail(early.id, "disk full", now=12.0, permanent=False, max_attempts=3,
                backoff_seconds=30.0)  # retry due at 42
    video = ledger.enqueue("long.mp4", "k2", "mosaic", {}, now=20.0)
    assert ledger.claim(now=21.0, lease_seconds=60).id == video.id
    later = ledger.enqueue("later.png", "k3", "mosaic", {}, now=30.0)
    ledger.release(video.id, now=50.0)  # SIGTERM: the video goes back, no attempt counted
    ledger.close()
    restarted = Ledger.open(tmp_path / "jobs.sqlite3")
    assert [j.source for j in restarted.active()] == ["long.mp4", "later.png", "early.png"]
    order = [restarted.claim(now=100.0, lease_seconds=60) for _ in range(3)]
    assert [j.id for j in order] == [video.id, later.id, early.id]
    assert order[0].attempts == 1  # its first attempt, counted once


def test_a_job_interrupted_by_a_crash_is_claimed_first_too(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "jobs.sqlite3")
    older = ledger.enqueue("older.png", "k1", "mosaic", {}, now=1.0)
    ledger.claim(now=2.0, lease_seconds=60)
    ledger.fail(older.id, "disk full", now=3.0, permanent=False, max_attempts=3,
                backoff_seconds=5.0)  # due again at 8
    ledger.enqueue("crashed.png", "k2", "mosaic", {}, now=4.0)
    crashed = ledger.claim(now=5.0, lease_seconds=60)  # then kill -9
    ledger.recover(now=100.0)
    assert ledger.claim(now=100.0, lease_seconds=60).id == crashed.id
    assert ledger.claim(now=100.0, lease_seconds=60).id == older.id


def test_nstd_retry_queues_behind_a_stopped_job_and_before_new_files(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "jobs.sqlite3")
    bad = ledger.enqueue("bad.png", "k1", "mosaic", {}, now=1.0)
    ledger.claim(now=2.0, lease_seconds=60)
    ledger.fail(bad.id, "corrupt", now=3.0, permanent=True, max_attempts=3, backoff_seconds=1)
    ledger.enqueue("video.mp4", "k2", "mosaic", {}, now=4.0)
    stopped = ledger.claim(now=5.0, lease_seconds=60)
    ledger.release(stopped.id, now=6.0)
    assert ledger.retry("bad.png") == 1
    ledger.enqueue("new.png", "k3", "mosaic", {}, now=8.0)
    assert [j.source for j in ledger.active()] == ["video.mp4", "bad.png", "new.png"]


# --------------------------------------------------------------------------- reads


def test_forget_and_find(ledger: Ledger) -> None:
    job = ledger.enqueue("gone.png", "k", "mosaic", {}, now=0.0)
    assert ledger.find("gone.png") == job
    assert ledger.forget(job.id)
    assert not ledger.forget(job.id)
    assert ledger.find("gone.png") is None


def test_recent_is_newest_first(ledger: Ledger) -> None:
    for i in range(5):
        job = ledger.enqueue(f"{i}.png", "k", "s", {}, now=float(i))
        ledger.claim(now=float(i), lease_seconds=1)
        ledger.complete(job.id, f"{i}.out.png", now=float(i + 10))
    assert [j.source for j in ledger.recent(3)] == ["4.png", "3.png", "2.png"]


def test_content_key(tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(300 * 1024))
    key = content_key(big)
    size, mtime_ns, digest = key.split(":")
    assert int(size) == 300 * 1024 and int(mtime_ns) == big.stat().st_mtime_ns
    assert len(digest) == 64
    assert content_key(big) == key
    # A change in the tail changes the key even with size and mtime forced back.
    st = big.stat()
    data = bytearray(big.read_bytes())
    data[-1] ^= 0xFF
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_key(big) != key
    # Same bytes and mtime under another name: same key (the ledger keys by path + key).
    twin = tmp_path / "twin.mp4"
    twin.write_bytes(big.read_bytes())
    os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_key(twin) == content_key(big)
    small = tmp_path / "small.png"
    small.write_bytes(b"")
    assert content_key(small).startswith("0:")


def test_content_key_refuses_links_and_fifos(tmp_path: Path) -> None:
    target = tmp_path / "target.png"
    target.write_bytes(b"x")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    with pytest.raises(InputError, match="symbolic link"):
        content_key(link)
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        content_key(fifo)  # returns at once: opened non-blocking, never read
    with pytest.raises(FileNotFoundError):
        content_key(tmp_path / "missing.png")


def test_daemon_lock_is_exclusive(db_path: Path) -> None:
    with DaemonLock(db_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(NstdError, match=f"pid {os.getpid()}"):
            DaemonLock(db_path).acquire()
    with DaemonLock(db_path):  # released on exit
        pass


def test_readonly_open_by_another_user_of_a_stopped_ledger() -> None:
    """`nstd status` as a user who may not create the WAL's -shm file beside the ledger."""
    folder = Path(tempfile.mkdtemp(prefix="nstd-ro-"))
    try:
        with Ledger.open(folder / "jobs.sqlite3") as writer:
            writer.enqueue("a.png", "k", "mosaic", {}, now=1.0)
        folder.chmod(0o555)  # nobody may create files here now
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from nstd.daemon.ledger import Ledger; "
                "print(Ledger.open(sys.argv[2], readonly=True).counts()['queued'])")
        cmd = [sys.executable, "-c", code, str(Path(__file__).resolve().parents[1]),
               str(folder / "jobs.sqlite3")]
        if os.geteuid() == 0:  # root ignores permissions: become nobody
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv to drop root")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if "Permission denied" in result.stderr and "python" in result.stderr.lower():
            pytest.skip("the interpreter is not readable by the unprivileged user")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)

"""The ledger's kept totals (`nstd.daemon.tally`) and what the status readers cost.

The counters must equal a recount from the rows after every kind of change, in ledgers
upgraded from version 2 too; their SQL rules must agree with the Python ones (`kind_of`,
`reason_class`); and `/metrics`, `/api/status.json` and `nstd status` must read them and
indexes, never every row (bench/ledger.py times that with 100,000 finished jobs).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nstd.cli.daemon import status_data
from nstd.daemon import tally
from nstd.daemon.jobspec import kind_of
from nstd.daemon.ledger import SCHEMA_VERSION, STATES, Ledger, ledger_path
from nstd.daemon.reasons import reason_class, reason_sql
from nstd.daemon.schema import MIGRATIONS
from nstd.daemon.tally import Tally, kind_sql
from nstd.errors import NstdError
from nstd.web import metrics
from nstd.web.model import snapshot

LEASE = 60.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return ledger_path(tmp_path / "state")


def recount_in_python(ledger: Ledger) -> Tally:
    """The totals from the rows, by the Python rules the old readers used."""
    counts = dict.fromkeys(STATES, 0)
    units: dict[str, int] = {}
    failures: dict[str, int] = {}
    for job in ledger.active() + ledger.recent(10**6):
        counts[job.state] += 1
        if job.state == "done" and job.progress_done:
            kind = kind_of(job.source) or ""
            units[kind] = units.get(kind, 0) + job.progress_done
        elif job.state == "failed":
            reason = reason_class(job.error)
            failures[reason] = failures.get(reason, 0) + 1
    return Tally(counts, units, failures)


def assert_counted(ledger: Ledger, step: str) -> Tally:
    kept = ledger.tally()
    assert kept == recount_in_python(ledger), step
    assert kept == ledger.recount(), step
    assert ledger.counts() == kept.counts, step
    return kept


def run_to_done(ledger: Ledger, source: str, key: str, now: float, units: int) -> int:
    job = ledger.enqueue(source, key, "mosaic", {}, now)
    assert job is not None
    claimed = ledger.claim(now + 100, LEASE)
    assert claimed is not None and claimed.id == job.id
    ledger.progress(job.id, units, units, 0.0)
    ledger.complete(job.id, f"/out/{source}", now + 101)
    return job.id


def test_counters_equal_a_recount_after_every_transition(db_path: Path) -> None:
    ledger = Ledger.open(db_path)

    def job(source: str) -> int:
        found = ledger.find(source)
        assert found is not None
        return found.id

    def fail(source: str, error: str, now: float, **how: Any) -> None:
        ledger.fail(job(source), error, now, backoff_seconds=1.0, **how)

    def edit_by_hand() -> None:  # the sqlite3 shell, say: the triggers count it too
        db = sqlite3.connect(db_path)
        db.execute("UPDATE jobs SET source = 'renamed.avi' WHERE source = 'v/b.MP4'")
        db.execute("UPDATE jobs SET error = 'disk full' WHERE state = 'failed'")
        db.commit()
        db.close()

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("image done", lambda: run_to_done(ledger, "a.png", "k1", 1, 300)),
        ("video done", lambda: run_to_done(ledger, "v/b.MP4", "k2", 2, 48)),
        ("done, of neither kind", lambda: run_to_done(ledger, "dir/.png", "k3", 3, 7)),
        ("enqueue", lambda: ledger.enqueue("c.mkv", "k4", "candy", {}, 10)),
        ("claim", lambda: ledger.claim(12, LEASE)),
        ("progress while running", lambda: ledger.progress(job("c.mkv"), 5, 50, 9.0)),
        ("renew", lambda: ledger.renew(job("c.mkv"), 13, LEASE)),
        ("fail with backoff", lambda: fail("c.mkv", "no report: stalled", 14,
                                           permanent=False, max_attempts=3)),
        ("claim after the backoff", lambda: ledger.claim(100, LEASE)),
        ("fail for good", lambda: fail("c.mkv", "CUDA out of memory", 101,
                                       permanent=True, max_attempts=3)),
        ("enqueue", lambda: ledger.enqueue("d.jpg", "k5", "candy", {}, 110)),
        ("claim", lambda: ledger.claim(111, LEASE)),
        ("fail at max attempts", lambda: fail("d.jpg", "d.jpg is truncated", 112,
                                              permanent=False, max_attempts=1)),
        ("retry by name", lambda: ledger.retry("d.jpg")),
        ("retry all", lambda: ledger.retry()),
        ("claim", lambda: ledger.claim(200, LEASE)),
        ("release", lambda: ledger.release(job("c.mkv"), 201)),
        ("claim", lambda: ledger.claim(202, LEASE)),
        ("recover", lambda: ledger.recover(203)),
        ("claim", lambda: ledger.claim(204, LEASE)),
        ("recover at max attempts", lambda: ledger.recover(205, max_attempts=1)),
        ("adopt done", lambda: ledger.adopt("e.webm", "k6", "mosaic", "done", 300,
                                            output="/out/e.webm")),
        ("adopt failed", lambda: ledger.adopt("f.png", "k7", "mosaic", "failed", 301,
                                              error="f.png: not an image nstd can read")),
        ("set_settings", lambda: ledger.set_settings(
            job("a.png"), {"style": {"max_side": 64}}, style="udnie",
            masks=[("udnie", "m.png")])),
        ("set_output", lambda: ledger.set_output(job("a.png"), "/out/other.png")),
        ("progress of a done job corrected", lambda: ledger.progress(job("v/b.MP4"), 50, 50,
                                                                     None)),
        ("enqueue", lambda: ledger.enqueue("g.mov", "k8", "mosaic", {}, 400)),
        ("replaced while queued", lambda: ledger.enqueue("g.mov", "k9", "mosaic", {}, 401)),
        ("forget queued", lambda: ledger.forget(job("g.mov"))),
        ("forget failed", lambda: ledger.forget(job("f.png"))),
        ("forget done", lambda: ledger.forget(job("a.png"))),
        ("edited by hand", edit_by_hand),
    ]
    seen: list[Tally] = []
    for name, action in steps:
        action()
        seen.append(assert_counted(ledger, name))
    # Not trivially equal: every kind of counter was in use on the way.
    assert {"image", "video", ""} <= {kind for t in seen for kind in t.units}
    assert {"oom", "input"} <= {reason for t in seen for reason in t.failures}
    assert seen[-1] == Tally({"queued": 1, "running": 0, "done": 3, "failed": 1},
                             {"video": 50, "": 7}, {"io": 1})
    ledger.close()


def write_version_2_ledger(path: Path, now: float) -> None:
    """A ledger as nstd with schema version 2 left it: jobs in every state, no counters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (2)")
    rows = [("a.png", "done", 300, None), ("b.mp4", "done", 120, None),
            ("c.mp4", "failed", 7, "c.mp4 is truncated or corrupt"),
            ("d.png", "failed", None, "out of memory"), ("e.jpg", "queued", None, None),
            ("f.mov", "running", 3, None), ("g.txt", "done", 9, None)]
    for i, (source, state, done, error) in enumerate(rows):
        db.execute("INSERT INTO jobs (source, content_key, style, state, attempts, created, "
                   "started, finished, progress_done, error) VALUES (?, ?, 'mosaic', ?, 1, ?, "
                   "?, ?, ?, ?)", (source, f"k{i}", state, now + i, now + i, now + i + 1,
                                   done, error))
    db.commit()
    db.close()


def test_a_version_2_ledger_upgrades_with_counters_equal_to_a_recount(db_path: Path) -> None:
    write_version_2_ledger(db_path, 1000.0)
    with pytest.raises(NstdError, match="schema version 2.*run the matching `nstd run` once"):
        Ledger.open(db_path, readonly=True)  # a reader never upgrades
    with Ledger.open(db_path) as ledger:
        kept = assert_counted(ledger, "upgraded")
        assert kept.counts == {"queued": 1, "running": 1, "done": 3, "failed": 2}
        assert kept.units == {"image": 300, "video": 120, "": 9}
        assert kept.failures == {"input": 1, "oom": 1}
        ledger.complete(ledger.claim(2000.0, LEASE).id, "/out/e.jpg", 2001.0)  # still counting
        assert_counted(ledger, "after the upgrade")
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")} == set(tally.TRIGGERS)
    db.close()
    with Ledger.open(db_path, readonly=True) as reader:
        assert reader.tally() == recount_in_python(reader)
        assert [j.source for j in reader.recent(2)] == ["e.jpg", "g.txt"]


def test_stale_or_missing_triggers_are_replaced_and_recounted_at_a_writable_open(
        db_path: Path) -> None:
    with Ledger.open(db_path) as ledger:
        run_to_done(ledger, "a.png", "k1", 1.0, 10)
        ledger.enqueue("b.png", "k2", "mosaic", {}, 2.0)
    db = sqlite3.connect(db_path)
    for name in tally.TRIGGERS:
        db.execute(f'DROP TRIGGER "{name}"')
    # Triggers of other rules (another nstd version): they count wrong, under another digest.
    db.execute("CREATE TRIGGER jobs_tally_insert_0000000000 AFTER INSERT ON jobs BEGIN "
               "UPDATE counters SET value = value + 100 WHERE name = 'jobs:queued'; END")
    db.execute("INSERT INTO jobs (source, content_key, style, state, created) "
               "VALUES ('c.png', 'k3', 'mosaic', 'queued', 3)")
    db.commit()
    db.close()
    with Ledger.open(db_path, readonly=True) as reader:  # reads as found, changes nothing
        assert reader.counts()["queued"] == 101
    with Ledger.open(db_path) as ledger:
        kept = assert_counted(ledger, "repaired")
        assert kept.counts["queued"] == 2 and kept.units == {"image": 10}


@pytest.mark.parametrize("name", [
    "a.png", "a.PNG", "dir/b.JpEg", "x/y.tiff", "a.tar.mp4", "clip.WebM", "a b.m4v",
    "line\nbreak.mov", "été/ö.bmp", "a.m\u212av",  # the Kelvin sign: Python lowers it to k
    "\u0130.png", "a.p\u0130g",  # a dotted capital I lowers to two characters
    ".png", "dir/.png", "..png", "dir/..mp4", "a.png/b", "dir.mp4/file", "a.mp4.txt",
    "noext", "a.", "dir/a.", "", "png", "mp4", "a.jpgx", "a.xjpg", "/abs/a.avi",
])
def test_the_sql_kind_of_a_name_is_kind_of(name: str) -> None:
    db = sqlite3.connect(":memory:")
    (kind,) = db.execute(f"SELECT {kind_sql('s')} FROM (SELECT ? AS s)", (name,)).fetchone()
    assert kind == (kind_of(name) or "")


@pytest.mark.parametrize(("error", "expected"), [
    ("CUDA Out Of Memory at 2048 px", "oom"), ("out of GPU memory", "oom"),
    ("no report from the worker for 300 s: STALLED", "stalled"),
    ("the worker process died (signal 9)", "worker_died"),
    ("x.mp4 is longer than limits.max_video_seconds", "limits"),
    ("the sidecar x.yaml: style.iterations", "settings"),
    ("x.png: not an image nstd can read", "input"), ("cannot decode frame 3", "input"),
    ("No space left on device", "io"), ("Read-Only file system", "io"),
    ("something else", "other"), ("", "other"), (None, "other"),
    ("\u017fettings (a long s is not an ASCII s)", "other"), ("it's 'quoted'", "other"),
])
def test_the_sql_reason_class_of_an_error_is_reason_class(error: str | None,
                                                           expected: str) -> None:
    db = sqlite3.connect(":memory:")
    (reason,) = db.execute(f"SELECT {reason_sql('e')} FROM (SELECT ? AS e)", (error,)).fetchone()
    assert reason == reason_class(error) == expected


def add_finished(path: Path, start: int, count: int) -> None:
    """``count`` more finished jobs, done and failed, images and videos, older than the rest
    (one transaction, through the ledger's schema and triggers)."""
    rows = [(f"old/{i}.{'mp4' if i % 3 else 'jpg'}", f"old{i}", "failed" if i % 10 == 0 else
             "done", 100 + i % 7, -1.0 - i, "cannot decode" if i % 10 == 0 else None)
            for i in range(start, start + count)]
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO jobs (source, content_key, style, state, progress_done, "
                   "created, started, finished, error) VALUES (?, ?, 'mosaic', ?, ?, ?5, ?5, ?5,"
                   " ?6)", rows)
    db.commit()
    db.close()


def steps_of(ledger: Ledger, read: Callable[[], Any]) -> int:
    """SQLite virtual machine steps (loop iterations: rows and index entries visited) that
    ``read`` costs on the ledger's connection."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    ledger._db.set_progress_handler(count, 1)
    try:
        read()
    finally:
        ledger._db.set_progress_handler(None, 1)
    return steps


def reader_costs(path: Path, state: Path) -> dict[str, int]:
    """What each status reader costs in SQLite steps, read as the daemon and the CLI do."""
    with Ledger.open(path) as ledger:
        supervisor = SimpleNamespace(ledger=ledger, workers=tuple)
        costs = {"/api/status.json": steps_of(ledger, lambda: snapshot(supervisor)),
                 "/metrics": steps_of(ledger, lambda: metrics.render(supervisor))}
    with Ledger.open(path, readonly=True) as reader:
        costs["nstd status"] = steps_of(
            reader, lambda: status_data(reader, str(state), time.time()))
    return costs


def test_the_status_readers_cost_the_same_with_ten_times_more_finished_jobs(
        tmp_path: Path, db_path: Path) -> None:
    with Ledger.open(db_path) as ledger:
        for i in range(3):
            run_to_done(ledger, f"{i}.png", f"k{i}", float(i), 10)
        ledger.enqueue("q.mp4", "kq", "mosaic", {}, 100.0)
        ledger.claim(101.0, LEASE)
        ledger.enqueue("r.png", "kr", "mosaic", {}, 102.0)
    add_finished(db_path, 0, 300)
    before = reader_costs(db_path, tmp_path / "state")
    add_finished(db_path, 300, 2700)
    after = reader_costs(db_path, tmp_path / "state")
    assert set(after) == {"/api/status.json", "/metrics", "nstd status"}
    for name, cost in after.items():
        # A scan would cost about 10x; an index descent is a step or two deeper.
        assert cost <= before[name] * 1.1 + 20, (name, before[name], cost)

"""The job ledger: one SQLite row per job, durable across crashes and readable while it runs.

States: ``queued -> running -> done``, or ``running -> queued`` (transient failure, retried
after a backoff) until ``max_attempts``, then ``failed``. ``nstd retry`` turns ``failed`` back
into ``queued``.

Decisions (why):
- WAL journal so ``nstd status`` reads while the daemon writes; ``busy_timeout`` so a writer
  waits for a moment instead of failing with "database is locked".
- ``synchronous=FULL``: in WAL mode NORMAL may lose the last commits on *power* loss (never on
  a process crash). Losing a ``done`` mark after the output was published would make a restart
  stylize the file again and publish a duplicate ``-1`` output. Commits are few (state changes
  and one progress row per frame, each seconds apart), so an fsync per commit costs nothing.
- Every method that needs the time takes ``now`` (seconds since the epoch, as ``time.time()``)
  so tests step time by hand.
- Mutating methods run in ``BEGIN IMMEDIATE`` transactions: the write lock is taken before
  reading, so two connections claiming at once can never take the same job.
- A partial unique index on ``(source, content_key)`` for queued/running/done jobs backs the
  dedupe rule in the database itself.
- One daemon per ledger: `DaemonLock` (`nstd.daemon.lock`) refuses a second one; leases
  then only tell ``nstd status`` whether the running job's daemon is still alive.
- Totals over every job (per state, units of done jobs, failures by reason) are kept by
  triggers in a ``counters`` table (`nstd.daemon.tally`), and ``recent`` reads an index: the
  status readers cost the same with 100,000 finished jobs as with ten.

The tables, their migrations and the `Job` row are in `nstd.daemon.schema`; the content key
in `nstd.daemon.keys`. Both, and `DaemonLock`, are imported from here as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from nstd.daemon import schema, tally
from nstd.daemon.keys import content_key
from nstd.daemon.lock import DaemonLock
from nstd.daemon.schema import (
    COLUMNS,
    SCHEMA_VERSION,
    STATES,
    Job,
    State,
    job_from_row,
    masks_json,
)
from nstd.daemon.tally import Tally
from nstd.faults import failpoint
from nstd.text import plural

__all__ = ["SCHEMA_VERSION", "STATES", "DaemonLock", "Job", "Ledger", "State", "content_key",
           "ledger_path"]

log = logging.getLogger(__name__)

LEDGER_FILENAME = "jobs.sqlite3"
# Backoff doubles per attempt; the cap keeps a large max_attempts from waiting for weeks.
MAX_BACKOFF_SECONDS = 6 * 3600.0
# Claim order is by not_before ("ready since"), then id: a job put back by a stop or a crash
# is ready since 0 and goes first; one requeued by `nstd retry` since 1 (the epoch's first
# second: after those, before every file that arrived).
READY_RESUMED = 0.0
READY_RETRIED = 1.0

def ledger_path(state_dir: str | os.PathLike[str]) -> Path:
    """The ledger file inside the configured ``daemon.state`` folder."""
    return Path(state_dir) / LEDGER_FILENAME


class Ledger:
    """The SQLite job ledger. Use `Ledger.open`; close with `close()` or a ``with`` block.

    One connection, guarded by a lock so the object may be shared between threads; separate
    `Ledger` objects (processes) on the same file are safe too.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> Ledger:
        """Open (creating the parent folder and schema) the ledger file at ``path``.

        ``readonly=True`` (for ``nstd status``) never creates or changes anything and raises
        `NstdError` when there is no ledger yet. Raises `NstdError` when the file is not a
        ledger or was written by a newer nstd.
        """
        path = Path(path)
        return cls(schema.connect(path, readonly=readonly), path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM jobs {sql}", args).fetchone()
        return job_from_row(row) if row else None

    def _many(self, sql: str, args: tuple[Any, ...] = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM jobs {sql}", args).fetchall()
        return [job_from_row(r) for r in rows]

    # ----------------------------------------------------------------- writing
    def enqueue(self, source: str, key: str, style: str, settings: Mapping[str, Any],
                now: float, masks: Sequence[tuple[str, str]] = ()) -> Job | None:
        """Queue ``source`` (POSIX path relative to the inbox) unless already known.

        Returns None when the same source with the same content key is queued, running or
        done. Identical bytes under another name are a new job; the same name with a new key
        (the file was replaced) is a new job, and a still-queued job for the old bytes is
        dropped because those bytes are gone.
        """
        payload = json.dumps(dict(settings), sort_keys=True)
        with self._write() as db:
            live = db.execute(
                "SELECT 1 FROM jobs WHERE source = ? AND content_key = ? "
                "AND state IN ('queued', 'running', 'done')", (source, key)).fetchone()
            if live:
                return None
            dropped = db.execute(
                "DELETE FROM jobs WHERE source = ? AND content_key != ? AND state = 'queued'",
                (source, key)).rowcount
            if dropped:
                log.info("%s was replaced before it was started; queued again", source)
            cur = db.execute(
                "INSERT INTO jobs (source, content_key, style, settings, state, not_before, "
                "created, masks) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (source, key, style, payload, now, now, masks_json(masks)))
            job_id = cur.lastrowid
        job = self.get(job_id)
        assert job is not None  # just inserted by this connection
        return job

    def claim(self, now: float, lease_seconds: float) -> Job | None:
        """Take the queued job that has waited longest, not backing off: running, attempts
        + 1, leased.

        Order: ``not_before`` (when the job became ready: its arrival, or the end of its
        retry backoff), then id. A job put back by a stop (`release`) or a crash (`recover`)
        is ready since 0: it resumes first after the restart, before files that arrived
        while it ran (its stored frames are the work already paid for).
        """
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ? "
                "ORDER BY not_before, id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?, "
                "started = ?, finished = NULL WHERE id = ?",
                (now + lease_seconds, now, row[0]))
            failpoint("ledger.claim")  # fault-injection tests: killed before COMMIT
        return self.get(row[0])

    def renew(self, job_id: int, now: float, lease_seconds: float) -> bool:
        """Extend a running job's lease; False when the job is no longer running."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running'",
                (now + lease_seconds, job_id))
        return cur.rowcount == 1

    def progress(self, job_id: int, done: int, total: int, eta: float | None) -> None:
        """Record "unit ``done`` of ``total``" (frames of a video, iterations of an image)."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET progress_done = ?, progress_total = ?, eta_seconds = ? "
                "WHERE id = ?", (done, total, eta, job_id))

    def complete(self, job_id: int, output: str, now: float) -> None:
        """Mark a job done with its published output path."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = 'done', output = ?, finished = ?, lease_until = NULL, "
                "eta_seconds = 0, error = NULL WHERE id = ?", (output, now, job_id))

    def fail(self, job_id: int, error: str, now: float, *, permanent: bool, max_attempts: int,
             backoff_seconds: float) -> Job:
        """Record a failed attempt and return the updated job.

        A transient failure goes back to ``queued`` with ``not_before = now + backoff *
        2**(attempts - 1)`` (capped at `MAX_BACKOFF_SECONDS`) while attempts < max_attempts;
        otherwise, or when ``permanent``, the job ends ``failed``. Check ``job.state``.
        """
        with self._write() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            attempts = row[0]
            if permanent or attempts >= max_attempts:
                db.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished = ?, "
                    "lease_until = NULL, eta_seconds = NULL WHERE id = ?",
                    (error, now, job_id))
            else:
                delay = min(backoff_seconds * 2 ** max(0, min(attempts - 1, 30)),
                            MAX_BACKOFF_SECONDS)
                db.execute(
                    "UPDATE jobs SET state = 'queued', error = ?, not_before = ?, "
                    "lease_until = NULL, eta_seconds = NULL WHERE id = ?",
                    (error, now + delay, job_id))
        job = self.get(job_id)
        assert job is not None
        return job

    def recover(self, now: float, max_attempts: int | None = None) -> int:
        """At start-up: jobs left ``running`` by a crash go back to ``queued``.

        Their attempt was counted when claimed; a job that has used ``max_attempts`` (it
        crashed the daemon or its worker that many times: a poison file) is ``failed``
        instead, with a reason saying so, and `interrupted_failures` lists it. They may start
        at once, first (``not_before = 0``). Returns how many were requeued. Call only while
        holding the `DaemonLock`.
        """
        self.interrupted_failures: list[Job] = []
        with self._write() as db:
            if max_attempts is not None:
                rows = db.execute("SELECT id, attempts FROM jobs WHERE state = 'running' "
                                  "AND attempts >= ?", (max_attempts,)).fetchall()
                for job_id, attempts in rows:
                    db.execute(
                        "UPDATE jobs SET state = 'failed', lease_until = NULL, finished = ?, "
                        "eta_seconds = NULL, error = ? WHERE id = ?",
                        (now, f"nstd stopped or crashed while processing this file "
                              f"{plural(attempts, 'time')} (the last error: "
                              f"{self._error(db, job_id) or 'none'})", job_id))
            # An interrupted job is claimed first (see `claim`).
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', lease_until = NULL, not_before = ? "
                "WHERE state = 'running'", (READY_RESUMED,))
        if max_attempts is not None:
            self.interrupted_failures = [j for j in (self.get(job_id) for job_id, _ in rows)
                                         if j is not None]
        if cur.rowcount:
            log.info("%s queued again", plural(cur.rowcount, "interrupted job"))
        return cur.rowcount

    @staticmethod
    def _error(db: sqlite3.Connection, job_id: int) -> str | None:
        row = db.execute("SELECT error FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def retry(self, name: str | None = None) -> int:
        """Requeue failed jobs (all, or those whose source path or file name is ``name``).

        Attempts are reset; they are claimed after stopped jobs and before new arrivals
        (``not_before = READY_RETRIED``, see `claim`). A failed row whose bytes were since
        queued or done again under the same name is left alone. Returns how many jobs were
        requeued.
        """
        with self._write() as db:
            rows = db.execute(
                "SELECT id, source, content_key FROM jobs WHERE state = 'failed' "
                "ORDER BY id").fetchall()
            count = 0
            for job_id, source, key in rows:
                if name is not None and name not in (source, PurePosixPath(source).name):
                    continue
                live = db.execute(
                    "SELECT 1 FROM jobs WHERE source = ? AND content_key = ? "
                    "AND state IN ('queued', 'running', 'done')", (source, key)).fetchone()
                if live:
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'queued', attempts = 0, not_before = ?, "
                    "finished = NULL WHERE id = ?", (READY_RETRIED, job_id))
                count += 1
        return count

    def forget(self, job_id: int) -> bool:
        """Delete a job row (e.g. a queued job whose source vanished). True if it existed."""
        with self._write() as db:
            cur = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return cur.rowcount == 1

    # (daemon helper) Three small writes the daemon needs; no schema change.
    def set_output(self, job_id: int, output: str | None) -> None:
        """Record the output path a job will publish to, before publishing (None clears it).

        After a crash, a job whose recorded output exists and verifies is finished without
        being computed again; other jobs never choose a path that a live job has recorded.
        """
        with self._write() as db:
            db.execute("UPDATE jobs SET output = ? WHERE id = ?", (output, job_id))

    def set_settings(self, job_id: int, settings: Mapping[str, Any],
                     style: str | None = None,
                     masks: Sequence[tuple[str, str]] | None = None) -> None:
        """Replace a job's per-job settings (e.g. a smaller style.max_side after running out
        of memory, or a sidecar fixed before `nstd retry`), and its style and masks when
        given."""
        payload = json.dumps(dict(settings), sort_keys=True)
        with self._write() as db:
            db.execute("UPDATE jobs SET settings = ?, style = COALESCE(?, style), "
                       "masks = COALESCE(?, masks) WHERE id = ?",
                       (payload, style, None if masks is None else masks_json(masks), job_id))

    def release(self, job_id: int, now: float) -> bool:
        """Put a running job back to ``queued`` without counting the attempt (the daemon was
        asked to stop, or paused): first in claim order. True if the job was running."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), "
                "lease_until = NULL, not_before = ?, eta_seconds = NULL "
                "WHERE id = ? AND state = 'running'", (READY_RESUMED, job_id))
        return cur.rowcount == 1

    def adopt(self, source: str, key: str, style: str, state: State, now: float, *,
              output: str | None = None, error: str | None = None,
              attempts: int = 1) -> Job | None:
        """Record a job that already ended (``done`` or ``failed``), e.g. rebuilt from the
        done/ and failed/ folders after the ledger was lost. None when that source and key
        are already known."""
        if state not in ("done", "failed"):
            raise ValueError(f"adopt: state must be done or failed, got {state!r}")
        with self._write() as db:
            known = db.execute("SELECT 1 FROM jobs WHERE source = ? AND content_key = ?",
                               (source, key)).fetchone()
            if known:
                return None
            cur = db.execute(
                "INSERT INTO jobs (source, content_key, style, settings, state, attempts, "
                "not_before, created, finished, output, error) "
                "VALUES (?, ?, ?, '{}', ?, ?, 0, ?, ?, ?, ?)",
                (source, key, style, state, attempts, now, now, output, error))
            job_id = cur.lastrowid
        return self.get(job_id)

    # ----------------------------------------------------------------- reading
    def get(self, job_id: int) -> Job | None:
        return self._one("WHERE id = ?", (job_id,))

    def find(self, source: str, key: str | None = None) -> Job | None:
        """The newest job for ``source`` (and ``key`` when given), any state."""
        if key is None:
            return self._one("WHERE source = ? ORDER BY id DESC LIMIT 1", (source,))
        return self._one("WHERE source = ? AND content_key = ? ORDER BY id DESC LIMIT 1",
                         (source, key))

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present (zero when none). From the kept counters:
        as cheap with 100,000 finished jobs as with none."""
        return self.tally().counts

    def tally(self) -> Tally:
        """The totals over every job (`nstd.daemon.tally`), read from the kept counters."""
        with self._lock:
            return tally.read(self._db, STATES)

    def recount(self) -> Tally:
        """The same totals summed from the rows: a full scan, for checks and repairs."""
        with self._lock:
            return tally.recount(self._db, STATES)

    def active(self) -> list[Job]:
        """Running jobs, then queued ones in claim order (see `claim`)."""
        return self._many(
            "WHERE state IN ('running', 'queued') "
            "ORDER BY state = 'queued', not_before, id")

    def recent(self, limit: int = 20) -> list[Job]:
        """The last ``limit`` finished (done or failed) jobs, newest first (read in the order
        of the ``jobs_finished`` index: ``limit`` rows, not the whole ledger)."""
        # INDEXED BY: without statistics SQLite prefers jobs_claim (state = ?) and then sorts
        # every finished job; the partial index gives them already in order.
        return self._many(
            "INDEXED BY jobs_finished WHERE state IN ('done', 'failed') "
            "ORDER BY finished DESC, id DESC LIMIT ?", (limit,))

"""The job ledger's file: its tables and their migrations, the `Job` row, and opening it.

Opening sets WAL (``nstd status`` reads while the daemon writes), ``busy_timeout`` (a writer
waits a moment instead of failing with "database is locked") and ``synchronous=FULL`` (in WAL
mode NORMAL may lose the last commits on power loss; see `nstd.daemon.ledger`), then brings
the schema to `SCHEMA_VERSION`. A read-only open (``nstd status``, possibly another user)
never creates or changes anything.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from nstd.daemon import tally
from nstd.errors import NstdError

log = logging.getLogger("nstd.daemon.ledger")

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000

State = Literal["queued", "running", "done", "failed"]
STATES: tuple[State, ...] = ("queued", "running", "done", "failed")

# Each entry upgrades the schema from version i to i + 1 (index i).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        source         TEXT    NOT NULL,            -- POSIX path relative to the inbox
        content_key    TEXT    NOT NULL,            -- see content_key()
        style          TEXT    NOT NULL,
        settings       TEXT    NOT NULL DEFAULT '{}', -- JSON: the sidecar's overrides
        state          TEXT    NOT NULL
                       CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts       INTEGER NOT NULL DEFAULT 0,  -- counted at claim
        lease_until    REAL,                        -- running only
        not_before     REAL    NOT NULL DEFAULT 0,  -- retry backoff
        progress_done  INTEGER,
        progress_total INTEGER,
        eta_seconds    REAL,
        created        REAL    NOT NULL,
        started        REAL,
        finished       REAL,
        output         TEXT,
        error          TEXT
    );
    CREATE INDEX jobs_claim ON jobs (state, not_before, id);
    CREATE INDEX jobs_source ON jobs (source);
    CREATE UNIQUE INDEX jobs_live_key ON jobs (source, content_key)
        WHERE state IN ('queued', 'running', 'done');
    """,
    # 2: style masks named by a sidecar (nstd.daemon.maskfiles): [[style, mask file], ...]
    """
    ALTER TABLE jobs ADD COLUMN masks TEXT NOT NULL DEFAULT '[]'
    """,
    # 3: large ledgers. The totals the status readers show, kept by triggers (nstd.daemon.tally:
    # created, and filled from the rows, by every writable open that lacks them), and the
    # finished jobs by time, so `recent` reads the last few rows instead of sorting them all.
    """
    CREATE TABLE counters (
        name  TEXT    PRIMARY KEY,                  -- jobs:<state>, units:<kind>, ...
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX jobs_finished ON jobs (finished, id) WHERE state IN ('done', 'failed')
    """,
)


@dataclass(frozen=True)
class Job:
    """One ledger row. Times are seconds since the epoch; ``settings`` is the decoded JSON."""

    id: int
    source: str
    content_key: str
    style: str
    settings: dict[str, Any] = field(hash=False, compare=True)
    state: State
    attempts: int
    lease_until: float | None
    not_before: float
    progress_done: int | None
    progress_total: int | None
    eta_seconds: float | None
    created: float
    started: float | None
    finished: float | None
    output: str | None
    error: str | None
    # ((style, mask file name), ...) from the sidecar's style_masks; empty: one style, no mask
    masks: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The source's file name (last path component)."""
        return PurePosixPath(self.source).name


COLUMNS = (
    "id, source, content_key, style, settings, state, attempts, lease_until, not_before, "
    "progress_done, progress_total, eta_seconds, created, started, finished, output, error, masks"
)


def job_from_row(row: tuple[Any, ...]) -> Job:
    values = list(row)
    values[4] = json.loads(values[4])
    values[17] = tuple((str(style), str(mask)) for style, mask in json.loads(values[17]))
    return Job(*values)


def masks_json(masks: Sequence[tuple[str, str]]) -> str:
    return json.dumps([[style, mask] for style, mask in masks])


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the ledger at ``path`` with its schema current (see the module
    docstring). Raises `NstdError` when the file is not a ledger or was written by a newer
    nstd, or (``readonly``) when there is none yet."""
    if readonly:
        db = _connect_readonly(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db, path, readonly)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise NstdError(
            f"the job ledger {path} cannot be used ({exc}); stop nstd and move it aside"
        ) from exc
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection, path: Path, readonly: bool) -> None:
    if readonly:
        version = _schema_version(db)
        if version != SCHEMA_VERSION:
            raise NstdError(
                f"the job ledger {path} has schema version {version}, this nstd "
                f"reads version {SCHEMA_VERSION}; run the matching `nstd run` once"
            )
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        _upgrade(db, path)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    version = _schema_version(db)
    if version > SCHEMA_VERSION:
        raise NstdError(
            f"the job ledger {path} has schema version {version}, newer than this "
            f"nstd supports ({SCHEMA_VERSION}); upgrade nstd"
        )
    for script in MIGRATIONS[version:]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    if version != SCHEMA_VERSION:
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    if tally.install(db):
        log.info("counted the jobs in %s for the status readers", path)


def _schema_version(db: sqlite3.Connection) -> int:
    try:
        row = db.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.OperationalError:  # no such table: not created yet
        return 0
    return int(row[0]) if row else 0


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for ``nstd status`` (possibly another user).

    A WAL reader needs the ``-shm`` file; when the daemon is stopped (no ``-wal`` left: every
    change is in the main file) and the reader may not create ``-shm`` in the folder, the
    file is opened as immutable instead.
    """
    if not path.is_file():
        raise NstdError(f"there is no job ledger at {path}; start `nstd run` first")
    base = path.resolve().as_uri()
    for query in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"{base}?{query}", uri=True, isolation_level=None,
                             check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return db
        except sqlite3.DatabaseError as exc:
            db.close()
            if not isinstance(exc, sqlite3.OperationalError):  # e.g. "file is not a database"
                raise NstdError(f"the job ledger {path} cannot be used ({exc})") from exc
            if Path(f"{path}-wal").exists() or query == "immutable=1":
                raise NstdError(
                    f"cannot read the job ledger {path} ({exc}); run as the daemon's user "
                    "or a member of its group"
                ) from exc
    raise AssertionError("unreachable")

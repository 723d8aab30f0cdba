"""The ledger file's schema: connecting, the tables and indexes, and their migrations.

The schema is versioned (a ``schema_version`` table): every writable open applies the
migrations the file lacks, in one transaction, so a ledger written by an older nstd is
upgraded in place; a file from a newer nstd is refused rather than misread. A read-only open
(``nstd status``) changes nothing and asks for the matching ``nstd run`` when the versions
differ.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from nstd.daemon import tally
from nstd.errors import NstdError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000

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



def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection to the ledger file with its settings (WAL, ``synchronous=FULL``, busy
    timeout; see `nstd.daemon.ledger`); read-only ones never create or change anything."""
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
        migrate(db, path, readonly)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise NstdError(
            f"the job ledger {path} cannot be used ({exc}); stop nstd and move it aside"
        ) from exc
    except BaseException:
        db.close()
        raise
    return db


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


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Bring the file to `SCHEMA_VERSION` (read-only: refuse another version)."""
    if readonly:
        version = schema_version(db)
        if version != SCHEMA_VERSION:
            raise NstdError(
                f"the job ledger {path} has schema version {version}, this nstd "
                f"reads version {SCHEMA_VERSION}; run the matching `nstd run` once"
            )
        return
    with immediate(db):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = schema_version(db)
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


def schema_version(db: sqlite3.Connection) -> int:
    """The file's schema version; 0 for a new file."""
    try:
        row = db.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.OperationalError:  # no such table: not created yet
        return 0
    return int(row[0]) if row else 0

"""The ledger's running totals: jobs per state, units of done jobs, failures per reason.

`/metrics`, `/api/status.json` and `nstd status` show totals over every job ever run; summing
the rows at each request costs a scan of the whole ledger (100,000 finished jobs: seconds per
scrape). Instead the ledger keeps them in its ``counters`` table, one row per name:

    jobs:<state>        jobs in that state
    units:<kind>        progress units of done jobs: frames of videos (``units:video``),
                        iterations of images (``units:image``), ``units:`` for neither,
                        by `nstd.daemon.jobspec.kind_of` of the source
    failed:<reason>     failed jobs per `nstd.daemon.reasons.reason_class` of their error

SQLite triggers on ``jobs`` keep them, in the transaction of each change, so no write path
(present or future, `nstd retry` or a hand-made fix with the sqlite3 shell) can forget one.
A trigger's name carries a digest of the rules: a writable open that finds other triggers
(an older ledger, or rules that changed since) replaces them and recounts from the rows.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nstd.daemon.reasons import reason_sql
from nstd.media.kinds import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

TRIGGER_PREFIX = "jobs_tally_"
# Only these columns change what a row counts for; other updates (leases, progress of a
# running job, outputs) fire no trigger and cost nothing.
_COUNTED_COLUMNS = ("state", "source", "progress_done", "error")


@dataclass(frozen=True)
class Tally:
    """The totals at one moment. Zero entries are left out of ``units`` and ``failures``;
    ``counts`` has every state."""

    counts: dict[str, int]
    units: dict[str, int]  # by kind: image, video, '' (neither)
    failures: dict[str, int]  # by reason class


def tally_of(pairs: Iterable[tuple[str, int]], states: Sequence[str]) -> Tally:
    """A `Tally` from ``(counter name, value)`` rows."""
    counts = dict.fromkeys(states, 0)
    units: dict[str, int] = {}
    failures: dict[str, int] = {}
    groups = {"jobs": counts, "units": units, "failed": failures}
    for name, value in pairs:
        group, _, key = name.partition(":")
        if group in groups and value:
            groups[group][key] = groups[group].get(key, 0) + int(value)
    return Tally(counts, units, failures)


def _ends_with(column: str, extensions: frozenset[str]) -> str:
    """SQL: the path in ``column`` has one of ``extensions`` as its suffix (see `kind_sql`)."""
    tests = []
    for length in sorted({len(e) for e in extensions}):
        names = ", ".join(f"'{e}'" for e in sorted(e for e in extensions if len(e) == length))
        tail = f"lower(replace(substr({column}, -{length}), char(8490), 'k'))"
        tests.append(f"({tail} IN ({names}) AND length({column}) > {length} "
                     f"AND substr({column}, -{length + 1}, 1) != '/')")
    return " OR ".join(tests)


def kind_sql(column: str) -> str:
    """SQL for `nstd.daemon.jobspec.kind_of` of the path in ``column``: 'image', 'video', or
    '' for neither.

    ``Path(name).suffix.lower()``: the name ends with the extension and holds more than it
    (a file called ``.png`` has no suffix). SQLite's ``lower()`` folds ASCII letters only;
    the one other character Python lowers to ASCII, the Kelvin sign, is mapped by hand, so
    the two agree on every name (a test checks). Checking the tail, not finding the last dot,
    keeps a trigger's cost per row small and constant.
    """
    return (f"(CASE WHEN {_ends_with(column, IMAGE_EXTENSIONS)} THEN 'image' "
            f"WHEN {_ends_with(column, VIDEO_EXTENSIONS)} THEN 'video' ELSE '' END)")


def _parts(row: str) -> list[tuple[str, str, str]]:
    """What one job row (``NEW``/``OLD`` in a trigger, ``jobs`` in a recount) counts for:
    ``(counter name, amount, condition)`` as SQL expressions."""
    units = f"COALESCE({row}.progress_done, 0)"
    return [
        (f"'jobs:' || {row}.state", "1", "true"),
        (f"'units:' || {kind_sql(f'{row}.source')}", units,
         f"{row}.state = 'done' AND {units} != 0"),
        (f"'failed:' || {reason_sql(f'{row}.error')}", "1", f"{row}.state = 'failed'"),
    ]


def _upserts(row: str, sign: str) -> str:
    """Trigger statements adding (``sign`` '') or taking away ('-') what ``row`` counts for:
    one plain upsert per counter (no sort, no temporary table: a few microseconds)."""
    return " ".join(
        f"INSERT INTO counters (name, value) SELECT {name}, {sign}{amount} WHERE {condition} "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;"
        for name, amount, condition in _parts(row))


def _recount_sql() -> str:
    """``(name, value)`` of every counter, summed over the rows (a full scan)."""
    rows = " UNION ALL ".join(f"SELECT {name} AS name, {amount} AS amount FROM jobs "
                              f"WHERE {condition}" for name, amount, condition in _parts("jobs"))
    return f"SELECT name, SUM(amount) FROM ({rows}) GROUP BY name HAVING SUM(amount) != 0"


def _trigger_bodies() -> dict[str, str]:
    """The three triggers after ``CREATE TRIGGER name``. An update counts only when the state
    changed, or a finished row's counted columns did: a frame's progress on a running job
    (one commit per frame) does no counter work."""
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _COUNTED_COLUMNS if c != "state")
    return {
        "insert": f"AFTER INSERT ON jobs BEGIN {_upserts('NEW', '')} END",
        "delete": f"AFTER DELETE ON jobs BEGIN {_upserts('OLD', '-')} END",
        "update": (
            f"AFTER UPDATE OF {', '.join(_COUNTED_COLUMNS)} ON jobs "
            f"WHEN OLD.state IS NOT NEW.state OR (NEW.state IN ('done', 'failed') "
            f"AND ({changed})) BEGIN {_upserts('OLD', '-')} {_upserts('NEW', '')} END"),
    }


def _triggers() -> dict[str, str]:
    """Trigger name -> its CREATE statement; the names end with a digest of the rules."""
    bodies = _trigger_bodies()
    digest = hashlib.sha256("\n".join(bodies.values()).encode()).hexdigest()[:10]
    return {f"{TRIGGER_PREFIX}{event}_{digest}":
            f"CREATE TRIGGER {TRIGGER_PREFIX}{event}_{digest} {body}"
            for event, body in bodies.items()}


TRIGGERS = _triggers()


def install(db: sqlite3.Connection) -> bool:
    """Make the triggers the current ones; when they were not, recount from the rows.

    Run by a writable open inside its transaction (after the migrations). True when the
    counters were rebuilt.
    """
    present = {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(TRIGGER_PREFIX), TRIGGER_PREFIX))}
    if present == set(TRIGGERS):
        return False
    for name in present:
        db.execute(f'DROP TRIGGER "{name}"')
    for statement in TRIGGERS.values():
        db.execute(statement)
    db.execute("DELETE FROM counters")
    db.execute(f"INSERT INTO counters (name, value) {_recount_sql()}")
    return True


def read(db: sqlite3.Connection, states: Sequence[str]) -> Tally:
    """The kept totals: a few rows, whatever the size of the ledger."""
    return tally_of(db.execute("SELECT name, value FROM counters").fetchall(), states)


def recount(db: sqlite3.Connection, states: Sequence[str]) -> Tally:
    """The totals summed from every row (a full scan): what the counters must equal."""
    return tally_of(db.execute(_recount_sql()).fetchall(), states)

"""Failure reasons in a few classes, by the words in the ledger's error text.

``nstd_failures_total{reason=...}`` counts failed jobs per class. The ledger keeps those counts
itself (`nstd.daemon.tally`: SQLite triggers), so the same rule exists twice: `reason_class`
in Python and `reason_sql` in SQL, both made from `REASON_CLASSES` below. Matching is a plain
substring test, case-insensitive for ASCII letters only (SQLite's ``lower()``), so the two
agree on every text; a test checks them against each other.
"""

from __future__ import annotations

import string

# The first class with a keyword in the error text wins; none: "other".
REASON_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("oom", ("out of memory", "out of gpu memory")),
    ("stalled", ("stalled", "no report")),
    ("worker_died", ("worker process died",)),
    ("limits", ("limits.", "larger than", "longer than", "more than")),
    ("settings", ("settings", "sidecar", "style")),
    ("input", ("not an image", "cannot read", "cannot decode", "truncated", "corrupt",
               "unreadable", "no video", "decode")),
    ("io", ("disk", "space", "permission", "read-only", "no such file")),
)
OTHER = "other"
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def reason_class(error: str | None) -> str:
    """A failure's class: one of `REASON_CLASSES`' names, or ``other``."""
    text = (error or "").translate(_ASCII_LOWER)
    for name, keywords in REASON_CLASSES:
        if any(keyword in text for keyword in keywords):
            return name
    return OTHER


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def reason_sql(column: str) -> str:
    """An SQL expression with `reason_class` of the text in ``column`` (NULL: ``other``)."""
    whens = []
    for name, keywords in REASON_CLASSES:
        test = " OR ".join(f"instr(lower({column}), {_literal(k)}) > 0" for k in keywords)
        whens.append(f"WHEN {test} THEN {_literal(name)}")
    return f"(CASE {' '.join(whens)} ELSE {_literal(OTHER)} END)"

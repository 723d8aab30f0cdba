"""Files in the inbox that no job holds yet: the ones still settling, or not yet noticed.

`nstd status` shows them (without it a file looks ignored for `daemon.settle_seconds`), and
the supervisor's "ready" line counts them. A file whose size and mtime are those of a job's
content key (queued, running, done with `originals: keep`, failed and waiting for its
re-check) belongs to that job and is not counted again: after a restart the inbox scan sees
the files of queued jobs too. No torch here (the supervisor imports this).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nstd.daemon.intake import relative_source
from nstd.daemon.ledger import Ledger
from nstd.daemon.watch import scan_inbox


@dataclass(frozen=True)
class Arrival:
    """One file in the inbox without a job: its path relative to the inbox, size, mtime."""

    source: str
    size: int
    mtime: float


def _known(ledger: Ledger, source: str, st: os.stat_result) -> bool:
    job = ledger.find(source)
    # content_key() starts with "<size>:<mtime_ns>:": equal means the same bytes, for all the
    # daemon can tell without reading the file.
    return job is not None and job.content_key.startswith(f"{st.st_size}:{st.st_mtime_ns}:")


def new_arrivals(paths: Iterable[Path], inbox: Path, ledger: Ledger) -> list[Arrival]:
    """Those of ``paths`` (inside ``inbox``) that are regular files no job in ``ledger`` holds,
    sorted by source."""
    found: list[Arrival] = []
    for path in paths:
        try:
            source = relative_source(inbox, path)
            st = os.lstat(path)
        except (ValueError, OSError):
            continue  # outside the inbox, or gone since
        if not _known(ledger, source, st):
            found.append(Arrival(source, st.st_size, st.st_mtime))
    return sorted(found, key=lambda a: a.source)


def inbox_arrivals(inbox: Path, ledger: Ledger) -> list[Arrival]:
    """`new_arrivals` of every candidate file in ``inbox`` (the daemon's own scan rules: no
    hidden files, symlinks or other extensions). The scan's "left alone" notes are the
    daemon's to log, not `nstd status`'s."""
    watch_log = logging.getLogger("nstd.daemon.watch")
    disabled, watch_log.disabled = watch_log.disabled, True
    try:
        return new_arrivals(scan_inbox(inbox), inbox, ledger)
    finally:
        watch_log.disabled = disabled

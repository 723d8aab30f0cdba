"""Where a running daemon's status page listens: ``<daemon.state>/http.json``, written by the
server (`nstd.web.server`) and read by `nstd status`.

The syntax of ``daemon.http`` and the loopback/token rule live in `nstd.http_address`, below
the daemon, because `nstd.config` checks them when it parses a config."""

from __future__ import annotations

import json
import os
from pathlib import Path

ADDRESS_FILE = "http.json"  # <daemon.state>/http.json: {"url": ..., "pid": ...}


def read_url(state: str | os.PathLike[str]) -> str | None:
    """The URL a running daemon's status page listens on (from ``<state>/http.json``)."""
    try:
        url = json.loads((Path(state) / ADDRESS_FILE).read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if isinstance(url, str) else None

"""The actors as `nstd status` shows them (read from ``<state>/cluster.json``; no Ray here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLUSTER_STATUS = "cluster.json"  # written by `nstd.cluster.backend.RayBackend`
STALE_SECONDS = 10.0  # older than this: the daemon is gone, the figures mean nothing


def read_actors(state: str | Path, now: float) -> list[dict[str, Any]] | None:
    """The actors of a running ``cluster.backend: ray`` daemon, None when there is none."""
    try:
        data = json.loads((Path(state) / CLUSTER_STATUS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or now - float(data.get("time", 0)) > STALE_SECONDS:
        return None
    actors = data.get("actors")
    return actors if isinstance(actors, list) else None


def format_actors(actors: list[dict[str, Any]]) -> list[str]:
    """``actor 1: busy on gpu-node-2 (cuda:0), clip.mp4 frames 1-300, 3.9 frames/s``."""
    lines = ["actors:"]
    for actor in actors:
        where = f"{actor.get('node') or '?'} ({actor.get('device') or '?'})"
        line = f"  {actor.get('name')}: {actor.get('state')} on {where}"
        if actor.get("unit"):
            line += f", {actor['unit']}, {float(actor.get('frames_per_second') or 0):.2f} " \
                    "frames/s"
        lines.append(line)
    return lines

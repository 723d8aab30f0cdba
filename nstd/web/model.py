"""What the page and ``/metrics`` show, as JSON-able data, read from a running supervisor.

The ledger (thread-safe: `Ledger` holds a lock) gives jobs; the supervisor's `workers()` gives
each worker's state and the running job's live progress (frozen copies its loop publishes at
the end of each step: safe to read from the page's thread).

ETA model (documented in docs/progress.md): a running job's ETA is its worker's
(extrapolated from this run's rate); a queued job is expected to take as long as the median
duration of the last `HISTORY` done jobs of its kind (image or video), or nothing is claimed
(``null``) before one of that kind has finished. Jobs are assumed to run one after the other
per worker, in claim order, so "all done by" = now + (sum of running ETAs and queued
estimates) / workers.
"""

from __future__ import annotations

import statistics
import time
from pathlib import PurePosixPath
from typing import Any

from nstd.daemon.jobspec import kind_of
from nstd.daemon.ledger import Job
from nstd.daemon.reasons import REASON_CLASSES, reason_class  # noqa: F401 - /metrics' names
from nstd.daemon.slots import WorkerView

HISTORY = 20
RECENT = 12
QUEUE_SHOWN = 50


def duration(job: Job) -> float | None:
    if job.started is None or job.finished is None:
        return None
    return max(0.0, job.finished - job.started)


def typical_seconds(done: list[Job]) -> dict[str, float]:
    """Median seconds of the recent done jobs, per kind (``image``, ``video``)."""
    by_kind: dict[str, list[float]] = {}
    for job in done:
        took = duration(job)
        kind = kind_of(job.source)
        if took is not None and kind is not None:
            by_kind.setdefault(kind, []).append(took)
    return {kind: statistics.median(values) for kind, values in by_kind.items()}


def seconds_per_unit(done: list[Job], kind: str) -> float | None:
    """Median seconds per frame (videos) or per iteration (images) of recent done jobs."""
    rates = [took / job.progress_total for job in done
             if kind_of(job.source) == kind and (took := duration(job)) is not None
             and job.progress_total]
    return statistics.median(rates) if rates else None


def workers_of(supervisor: Any, now_mono: float) -> list[dict[str, Any]]:
    """Each worker slot: name, state, and the job it runs with its live progress."""
    views: tuple[WorkerView, ...] = supervisor.workers()
    return [{
        "name": v.name, "state": v.state, "pid": v.pid, "device": v.device,
        "since_seconds": round(max(0.0, now_mono - v.since), 1),
        "job": v.job, "source": v.source, "stage": v.stage, "done": v.done, "total": v.total,
        "eta_seconds": v.eta,
        "frame_losses": list(v.frame_losses) if v.frame_losses is not None else None,
    } for v in views]


def public_job(job: Job) -> dict[str, Any]:
    """A job as the page sees it: ids and names, never paths of this machine."""
    return {"id": job.id, "source": job.source, "name": PurePosixPath(job.source).name,
            "kind": kind_of(job.source), "style": job.style, "state": job.state,
            "attempts": job.attempts, "created": job.created, "started": job.started,
            "finished": job.finished, "error": job.error,
            "output_name": PurePosixPath(job.output).name if job.output else None}


def snapshot(supervisor: Any, now: float | None = None,
             now_mono: float | None = None) -> dict[str, Any]:
    """Everything the page shows (``/api/status.json``). Times are epoch seconds."""
    now = time.time() if now is None else now
    now_mono = time.monotonic() if now_mono is None else now_mono
    ledger = supervisor.ledger
    active = ledger.active()
    history = ledger.recent(HISTORY * 5)
    done = [j for j in history if j.state == "done"][:HISTORY]
    typical = typical_seconds(done)
    workers = workers_of(supervisor, now_mono)
    live = {w["job"]: w for w in workers if w["job"] is not None}
    running, queued = [], []
    backlog = 0.0
    for job in active:
        data = public_job(job)
        if job.state == "running":
            w = live.get(job.id, {})
            data.update(stage=w.get("stage"), done=w.get("done", job.progress_done),
                        total=w.get("total", job.progress_total),
                        eta_seconds=w.get("eta_seconds", job.eta_seconds),
                        worker=w.get("name"), frame_losses=w.get("frame_losses"))
            backlog += data["eta_seconds"] or 0.0
            running.append(data)
        else:
            estimate = typical.get(kind_of(job.source) or "")
            data["estimate_seconds"] = estimate
            data["not_before"] = job.not_before
            backlog += estimate or 0.0
            queued.append(data)
    unknown = any(q["estimate_seconds"] is None for q in queued) or any(
        r["eta_seconds"] is None for r in running)
    slots = max(1, len(workers))
    finish = None if unknown else now + backlog / slots
    oldest = min((j.created for j in active if j.state == "queued"), default=None)
    gate = getattr(supervisor, "schedule_state", None)
    schedule = gate() if callable(gate) else {"paused": False, "reason": None, "until": None}
    space = getattr(supervisor, "space_state", None)
    return {
        "now": now,
        "counts": ledger.counts(),
        "schedule": schedule,
        "space": space() if callable(space) else {"waiting": False},
        "workers": workers,
        "running": running,
        "queue": queued[:QUEUE_SHOWN],
        "queue_length": len(queued),
        "oldest_queued_age_seconds": None if oldest is None else max(0.0, now - oldest),
        "all_done_by": finish,
        "all_done_by_hhmm": (time.strftime("%H:%M", time.localtime(finish))
                             if finish is not None else None),
        "recent": [public_job(j) for j in history[:RECENT]],
        "seconds_per_frame": seconds_per_unit(done, "video"),
        "seconds_per_iteration": seconds_per_unit(done, "image"),
    }

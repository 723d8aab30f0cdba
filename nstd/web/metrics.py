"""Prometheus ``/metrics``: a collector that reads the supervisor at scrape time.

Nothing is counted in memory: every figure comes from the ledger and the worker slots when
Prometheus asks, so a restart loses no count. The totals over every finished job are the
ledger's own counters (`Ledger.tally`, kept by triggers), so a scrape costs the same with
100,000 jobs in the ledger as with ten (``bench/ledger.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from nstd.web.model import snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_NAMES = (
    "nstd_jobs", "nstd_frames_done_total", "nstd_iterations_done_total",
    "nstd_seconds_per_frame", "nstd_seconds_per_iteration", "nstd_worker_up",
    "nstd_worker_busy", "nstd_queue_length", "nstd_oldest_queued_age_seconds",
    "nstd_failures_total", "nstd_paused",
)


class SupervisorCollector:
    """Reads ``supervisor`` (its ``ledger`` and worker slots) at each scrape."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        data = snapshot(self.supervisor)
        jobs = GaugeMetricFamily("nstd_jobs", "Jobs in the ledger by state", labels=["state"])
        for state, count in sorted(data["counts"].items()):
            jobs.add_metric([state], count)
        yield jobs
        totals = self.supervisor.ledger.tally()
        units = {"video": totals.units.get("video", 0), "image": totals.units.get("image", 0)}
        failures = totals.failures
        for job in data["running"]:
            if job["kind"] in units and job["stage"] in ("frame", "iteration"):
                units[job["kind"]] += job["done"] or 0
        yield CounterMetricFamily("nstd_frames_done", "Video frames stylized (done and "
                                  "running jobs)", value=units["video"])
        yield CounterMetricFamily("nstd_iterations_done", "Optimizer iterations of image "
                                  "jobs (done and running jobs)", value=units["image"])
        fail = CounterMetricFamily("nstd_failures", "Jobs failed for good, by reason class",
                                   labels=["reason"])
        for cls, count in sorted(failures.items()):
            fail.add_metric([cls], count)
        yield fail
        for name, key, what in (("nstd_seconds_per_frame", "seconds_per_frame", "frame"),
                                ("nstd_seconds_per_iteration", "seconds_per_iteration",
                                 "iteration of an image")):
            value = data[key]
            yield GaugeMetricFamily(name, f"Median wall seconds per {what} of recent done "
                                    "jobs (NaN before one)",
                                    value=float("nan") if value is None else value)
        up = GaugeMetricFamily("nstd_worker_up", "1 when the worker process is ready or busy",
                               labels=["worker"])
        busy = GaugeMetricFamily("nstd_worker_busy", "1 while the worker runs a job",
                                 labels=["worker"])
        for w in data["workers"]:
            up.add_metric([w["name"]], 1.0 if w["state"] in ("idle", "busy") else 0.0)
            busy.add_metric([w["name"]], 1.0 if w["state"] == "busy" else 0.0)
        yield up
        yield busy
        yield GaugeMetricFamily("nstd_queue_length", "Queued jobs", value=data["queue_length"])
        oldest = data["oldest_queued_age_seconds"]
        yield GaugeMetricFamily("nstd_oldest_queued_age_seconds",
                                "Age of the oldest queued job (0 when none)",
                                value=oldest or 0.0)
        yield GaugeMetricFamily("nstd_paused", "1 while outside active_hours or paused",
                                value=1.0 if data["schedule"].get("paused") else 0.0)


def render(supervisor: Any) -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor))
    return generate_latest(registry)

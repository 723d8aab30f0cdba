"""The status page plots a video's frame loss so far: a bounded series travels from the
worker to the page."""

from __future__ import annotations

import pytest

from nstd.daemon.lifecycle import Reporter
from nstd.progress import JobProgress
from nstd.series import IndexedSeries, Series
from nstd.web.page import running, sparkline


def test_the_series_stays_bounded_and_keeps_the_mean_of_every_run():
    series = Series(points=8)
    for i in range(1000):
        series.add(float(i))
    values = series.values()
    assert len(values) <= 8
    # Every value is the mean of an equal run of consecutive samples, oldest first.
    assert values[0] == pytest.approx((series.per_point - 1) / 2)
    assert values == sorted(values)
    short = Series(points=8)
    for v in (1.0, 3.0, 5.0):
        short.add(v)
    assert short.values() == [1.0, 3.0, 5.0]


def test_the_worker_sends_the_frame_losses_with_its_frame_progress():
    events = []
    clock = iter(range(0, 1000, 2))  # two seconds apart: every event is due
    reporter = Reporter(7, events.append, clock=lambda: float(next(clock)))
    for done, loss in enumerate([4.0, 2.0, 3.0], start=1):
        reporter.progress(JobProgress(done=done, total=3, unit="frame", elapsed=done,
                                      loss=loss))
    assert events[-1]["losses"] == [4.0, 2.0, 3.0]
    assert all("losses" in e for e in events if e["stage"] == "frame")


def test_the_running_job_shows_a_sparkline_of_its_frame_losses():
    job = {"id": 3, "source": "clip.mp4", "style": "mosaic", "attempts": 1, "stage": "frame",
           "done": 5, "total": 10, "eta_seconds": 12.0, "worker": "worker 1",
           "frame_losses": [0.5, 0.4, 0.45, 0.42]}
    html = running({"running": [job]}, lambda job_id, which: None)
    assert '<svg class="losses"' in html and "0.4 … 0.5" in html
    assert html.count(",") >= 4  # four points
    assert sparkline(None) == sparkline([1.0]) == ""


def test_frames_arriving_out_of_order_are_plotted_in_frame_order_within_bounds():
    series = IndexedSeries(total=1000, points=10)  # ranges of 100 frames
    for index in [*range(500, 600), *range(0, 100), 150]:  # two units, then one more frame
        series.add(index, float(index // 100))
    assert series.values() == [0.0, 1.0, 5.0]  # filled ranges only, lowest first
    big = IndexedSeries(total=10**6, points=120)
    for index in range(0, 10**6, 997):
        big.add(index, 1.0)
    assert len(big.values()) <= 120


def test_frames_arriving_out_of_order_send_their_losses_by_position():
    # (how the Ray driver reports: units finish in any order)
    events = []
    clock = iter(range(0, 1000, 2))  # every event due
    reporter = Reporter(9, events.append, clock=lambda: float(next(clock)))
    reporter.start_frames(4, 0)
    reporter.frame(2, 3.0)  # unit 2 first
    reporter.frame(0, 1.0)
    assert events[-1]["losses"] == [1.0, 3.0]
    assert events[-1]["stage"] == "frame" and events[-1]["done"] == 2

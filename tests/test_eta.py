"""ETAs that say what the remaining work costs: cold and warm video frames apart, an image's
iterations at the current scale, and "unknown" rather than a figure likely off by > 3x.

The video test runs the real frame loop on a small clip with a fake clock that advances by
the work each frame did (iterations x a fixed cost), so it measures the model, not the load
of the machine it runs on."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from nstd.config import parse_config
from nstd.engine.stylizer import build_stylizer
from nstd.eta import FrameEta, IterationEta
from nstd.job import JobRequest
from nstd.pipeline import run_job
from nstd.progress import JobProgress, describe
from nstd.temporal import frames
from nstd.testing.media import write_test_clip, write_test_image

SECONDS_PER_ITERATION = 0.25
SECONDS_PER_FRAME = 0.1  # decoding, flow, storing: what a frame costs besides its iterations


def within(estimate: float, real: float, factor: float) -> bool:
    return real / factor <= estimate <= real * factor


# --------------------------------------------------------------------------- the video model


def test_a_cold_first_frame_gives_unknown_then_the_first_warm_frame_calibrates() -> None:
    eta = FrameEta(24, cold_frames={0}, now=0.0)
    eta.computed(0, cold=True, now=40.0)  # coarse-to-fine: 40 s
    assert eta.remaining() is None  # 23 warm frames ahead, none measured: not 23 x 40 s
    eta.computed(1, cold=False, now=42.0)
    assert eta.remaining() == pytest.approx(22 * 2.0)


def test_shot_starts_still_ahead_are_priced_as_cold_frames() -> None:
    eta = FrameEta(20, cold_frames={0, 10}, now=0.0)
    eta.computed(0, cold=True, now=30.0)
    eta.computed(1, cold=False, now=31.0)
    assert eta.remaining() == pytest.approx(30.0 + 17 * 1.0)  # frame 10 cold, 17 warm
    for index in range(2, 11):
        eta.computed(index, cold=index == 10, now=31.0 + (index - 1) + (29.0 if index == 10
                                                                        else 0.0))
    assert eta.remaining() == pytest.approx(9 * 1.0)


def test_warm_frames_of_varying_cost_are_priced_by_their_running_mean() -> None:
    eta = FrameEta(10, cold_frames={0}, now=0.0)
    eta.computed(0, cold=True, now=10.0)
    t = 10.0
    for index, cost in zip(range(1, 5), (1.0, 3.0, 1.0, 3.0), strict=True):
        t += cost
        eta.computed(index, cold=False, now=t)
    assert eta.remaining() == pytest.approx(5 * 2.0)


def test_stored_frames_cost_nothing_and_a_resumed_run_waits_for_its_own_measure() -> None:
    eta = FrameEta(10, cold_frames={0}, now=0.0)
    for index in range(5):
        eta.loaded(index, now=0.01 * index)
    assert eta.remaining() is None  # only warm frames ahead, none made in this run yet
    eta.computed(5, cold=False, now=2.04)
    assert eta.remaining() == pytest.approx(4 * 2.0)


def test_unknown_is_said_in_words() -> None:
    line = describe(JobProgress(done=1, total=24, unit="frame", elapsed=40.0, remaining=None,
                                modelled=True))
    assert line.endswith("ETA unknown")


def test_a_small_clip_after_its_first_warm_frame_is_within_1_5x_of_the_real_remaining_time(
        tmp_path: Path, vgg_weights_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real frame loop (cold frame coarse-to-fine, warm frames with early stopping:
    their iteration counts vary), timed by a clock that advances by the work done."""
    clock = SimpleNamespace(t=1000.0)
    monkeypatch.setattr(frames, "time", SimpleNamespace(monotonic=lambda: clock.t))
    config = parse_config({
        "model": {"weights": str(vgg_weights_path), "device": "cpu"},
        "style": {"max_side": 48, "iterations": 40, "coarse_iterations": 20,
                  "scales": [0.5, 1.0], "min_scale_side": 16},
        "video": {"frame_iterations": 20, "frame_tolerance": 0.2, "crf": 10,  # loose: warm
                  # frames stop early after varying counts
                  "preset": "ultrafast"},
    })
    stylizer = build_stylizer(config.model, config.style)
    real_run = stylizer.run
    iterations: list[int] = []

    def timed_run(*args, **kwargs):
        result = real_run(*args, **kwargs)
        iterations.append(result.iterations)
        clock.t += SECONDS_PER_FRAME + SECONDS_PER_ITERATION * result.iterations
        return result

    monkeypatch.setattr(stylizer, "run", timed_run)
    source = write_test_clip(tmp_path / "clip.mp4", frames=12, size=(64, 48))
    style = write_test_image(tmp_path / "style.png", size=(32, 32), seed=3)
    seen: list[tuple[int, float | None, float]] = []

    def progress(p: JobProgress) -> None:
        if p.unit == "frame":
            seen.append((p.done, p.eta, clock.t))

    run_job(JobRequest(source=source, output=tmp_path / "out.mp4", styles=(style,),
                       blend=(1.0,), config=config), stylizer, progress=progress)
    end = seen[-1][2]
    assert [done for done, _, _ in seen] == list(range(1, 13))
    assert iterations[0] > 3 * max(iterations[1:])  # a cold frame, then cheap warm ones
    assert len(set(iterations[1:])) > 1, iterations  # early stopping: warm costs vary
    assert seen[0][1] is None  # after the cold frame: unknown, not 11 x the cold frame
    for done, eta, at in seen[1:-1]:
        assert eta is not None and within(eta, end - at, 1.5), (done, eta, end - at, seen)
    assert seen[-1][1] == 0.0


# --------------------------------------------------------------------------- the image model


def test_an_image_eta_uses_the_current_scales_time_per_iteration() -> None:
    """50 coarse iterations at 1/4 of the pixels, then 100 at full size: at iteration 74 the
    old overall rate said 76 x (elapsed / 74); the current scale's rate says 76 x its own."""
    plan = [((48, 64), 50), ((96, 128), 100)]
    eta = IterationEta(plan)
    t = 0.0
    for i in range(1, 51):
        t += 0.1
        eta.update(i, 0, t)
    for i in range(51, 75):
        t += 0.4
        left = eta.update(i, 1, t)
    assert left == pytest.approx(76 * 0.4)
    real_rate_left = t / 74 * 76
    assert real_rate_left < 0.6 * left  # what the overall rate would have said: far short


def test_an_image_eta_prices_larger_scales_by_their_pixels_and_is_unknown_at_first() -> None:
    eta = IterationEta([((48, 64), 50), ((96, 128), 100)])
    assert eta.update(1, 0, 0.1) is None  # one iteration: no rate yet
    assert eta.update(2, 0, 0.2) == pytest.approx(48 * 0.1 + 100 * 0.1 * 4)
    assert eta.update(51, 1, 5.0) is None  # a new scale: measured afresh


def test_an_image_job_reports_a_modelled_eta(tmp_path: Path, vgg_weights_path: Path) -> None:
    config = parse_config({
        "model": {"weights": str(vgg_weights_path), "device": "cpu"},
        "style": {"max_side": 64, "iterations": 6, "coarse_iterations": 4,
                  "scales": [0.5, 1.0], "min_scale_side": 16, "tolerance": 0.0},
    })
    photo = write_test_image(tmp_path / "photo.png", size=(64, 48), seed=1)
    style = write_test_image(tmp_path / "style.png", size=(32, 32), seed=3)
    seen: list[JobProgress] = []
    run_job(JobRequest(source=photo, output=tmp_path / "out.png", styles=(style,),
                       blend=(1.0,), config=config),
            build_stylizer(config.model, config.style), progress=seen.append)
    assert all(p.modelled for p in seen)
    assert seen[0].eta is None and seen[1].eta is not None  # one iteration, then a rate
    assert seen[4].eta is None  # the first iteration at full size: measured afresh
    assert seen[-1].eta == 0.0 and seen[-1].detail == "done"

"""Cutting a video into units for several workers, seeking to a unit, and the seam between."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nstd.config import LimitsConfig
from nstd.media.container import iter_frames, probe_video
from nstd.temporal.plan import plan_units
from nstd.temporal.seam import crossfade
from nstd.testing.media import write_test_clip
from nstd.testing.shots import write_shots_clip


def units(frames: int, cuts: list[int], longest: int, overlap: int):
    return plan_units({"frames": frames, "cuts": cuts}, longest, overlap)


def test_shots_are_units_and_the_longest_goes_first():
    got = units(30, [10, 14], 300, 8)
    assert [(u.first, u.start, u.stop) for u in got] == [(14, 14, 30), (0, 0, 10), (10, 10, 14)]


def test_a_long_shot_is_split_and_later_pieces_start_an_overlap_early():
    got = sorted(units(100, [], 30, 8), key=lambda u: u.start)
    assert [(u.start, u.stop) for u in got] == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert [u.first for u in got] == [0, 17, 42, 67]
    assert all(u.cold == (u.first,) for u in got)


def test_no_piece_is_shorter_than_the_overlap_and_overlaps_stay_in_one_shot():
    for frames in range(1, 60):
        for cut in (None, frames // 3):
            cuts = [cut] if cut else []
            got = units(frames, cuts, 5, 8)
            starts = sorted({0, *cuts})
            assert sorted(f for u in got for f in range(u.start, u.stop)) == list(range(frames))
            for u in got:
                shot = max(s for s in starts if s <= u.start)
                assert u.first >= shot
                if u.first < u.start:
                    assert u.stop - u.start >= 8 and u.start - u.first == 8


def test_a_shot_shorter_than_the_overlap_is_never_split():
    assert [(u.first, u.start, u.stop) for u in units(7, [], 2, 8)] == [(0, 0, 7)]


@pytest.mark.parametrize("clip", ["shots", "plain"])
def test_seeking_to_a_unit_gives_the_frames_a_decode_from_the_start_gives(tmp_path, clip):
    path = (write_shots_clip(tmp_path / "a.mp4", shots=3, frames_per_shot=10)  # GOP 12
            if clip == "shots" else write_test_clip(tmp_path / "b.mp4", frames=30))
    info = probe_video(path, LimitsConfig())
    every = list(iter_frames(path, info))
    for k in (1, 11, 12, 13, 29):
        part = list(iter_frames(path, info, start_index=k, start_pts=every[k].pts))
        assert [f.index for f in part] == list(range(k, 30))
        assert all(np.array_equal(a.rgb, b.rgb) and a.pts == b.pts
                   for a, b in zip(part, every[k:], strict=True))


def test_a_wrong_seek_pts_falls_back_to_decoding_from_the_start(tmp_path):
    path = write_shots_clip(tmp_path / "a.mp4", shots=2, frames_per_shot=10)
    info = probe_video(path, LimitsConfig())
    every = list(iter_frames(path, info))
    part = list(iter_frames(path, info, start_index=13, start_pts=every[13].pts + 1))
    assert [f.index for f in part] == list(range(13, 20))
    assert np.array_equal(part[0].rgb, every[13].rgb)


def test_the_crossfade_steps_evenly_from_one_unit_to_the_next():
    a, b = np.zeros((2, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    weights = [float(crossfade(a, b, p, 4)[0, 0, 0]) for p in range(4)]
    assert weights == pytest.approx([0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError):
        crossfade(a, b, 4, 4)


def test_plan_and_seam_need_no_torch():
    code = ("import sys, nstd.temporal.plan, nstd.temporal.seam, nstd.cluster.driver, "
            "nstd.cluster.pool, nstd.cluster.schedule; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_the_seam_pass_hides_a_split_and_keeps_the_frame_loss(tmp_path, vgg_weights_path):
    """A slowly panning shot split in 3 units with the shipped overlap (12): the seam pass
    keeps the frame pairs around each unit boundary near the same pairs of the unsplit run,
    and the mean frame loss no more than 5 % above the unsplit run's; a hard cut is > 5x the
    median pair.

    The bar of 1.5x the unsplit pairs is met on the panel's pan with the full-width network
    (bench/seam.py --clip pan: 1.30 and 1.29); with this slim network and a uniform pan the
    second boundary comes out at 1.6x (the first 1.1x), so this test guards at 2x: far from
    the hard cut's ~10x. The loss comes out *lower* than unsplit (about 0.84x): each unit
    starts cold, with the full budget."""
    from nstd.config import parse_config
    from nstd.daemon.engines import EngineCache
    from nstd.job import JobRequest
    from nstd.pipeline import load_style_target, run_job
    from nstd.testing.media import write_test_image
    from nstd.testing.pan import write_pan_clip
    from nstd.testing.split import boundary_ratios, measure, run_split, seam_pairs

    clip = write_pan_clip(tmp_path / "pan.mp4", 48, (48, 32))
    style = write_test_image(tmp_path / "style.png", size=(32, 32), seed=5)
    config = parse_config({"model": {"weights": str(vgg_weights_path), "device": "cpu"},
                           "style": {"max_side": 48, "iterations": 60},
                           "cluster": {"max_unit_frames": 16, "unit_overlap": 12}})
    engines = EngineCache.load(config.model)
    stylizer = engines.stylizer(config)
    request = JobRequest(source=clip, output=tmp_path / "unsplit.mp4", styles=(style,),
                         blend=(1.0,), config=config, work_dir=tmp_path / "w0")
    target = load_style_target(stylizer, request)
    run_job(request, stylizer)
    seamed = run_split(clip, tmp_path / "seam.mp4", tmp_path / "w1", config, stylizer, target)
    run_split(clip, tmp_path / "cut.mp4", tmp_path / "w2", config, stylizer, target, fade=False)
    assert len(seamed["units"]) == 3
    whole = measure(clip, tmp_path / "unsplit.mp4", stylizer, target, config,
                    seam_pairs(seamed["units"], True))
    seam = measure(clip, tmp_path / "seam.mp4", stylizer, target, config,
                   seam_pairs(seamed["units"], True))
    cut = measure(clip, tmp_path / "cut.mp4", stylizer, target, config,
                  seam_pairs(seamed["units"], False))
    ratios = boundary_ratios(seam, whole, seamed["units"])
    print(f"seam pairs / unsplit pairs per boundary {ratios}; "
          f"seam max {seam['seam_max_ratio']:.2f}"
          f" x median (unsplit, same pairs {whole['seam_max_ratio']:.2f}), hard cut "
          f"{cut['seam_max_ratio']:.2f}, loss "
          f"{seam['mean_frame_loss'] / whole['mean_frame_loss']:.3f}x unsplit")
    assert cut["seam_max_ratio"] > 5  # the jump the seam pass hides
    assert len(ratios) == 2 and max(ratios) <= 2.0
    assert seam["mean_frame_loss"] <= 1.05 * whole["mean_frame_loss"]

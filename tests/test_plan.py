"""A video's plan and identity: the cluster: section changes neither a stored frame nor the
units a resumed job was first cut into."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from nstd.config import Config, parse_config
from nstd.media.container import VideoInfo, probe_video
from nstd.temporal.plan import fingerprint, output_size, plan_units, plan_video, unit_cut
from nstd.temporal.store import FrameStore
from nstd.testing.media import write_test_image
from nstd.testing.shots import write_shots_clip

OTHER_CLUSTER = {"backend": "ray", "ray_address": "auto", "wire_format": "png8",
                 "max_unit_frames": 5, "unit_overlap": 2}


@pytest.fixture()
def clip(tmp_path: Path) -> tuple[Path, VideoInfo]:
    path = write_shots_clip(tmp_path / "clip.mp4", shots=1, frames_per_shot=20)
    return path, probe_video(path, Config.default().limits)


def mark(clip: tuple[Path, VideoInfo], style: Path, config: Config) -> dict:
    source, info = clip
    size = output_size(info.width, info.height, config.style.max_side)
    return fingerprint(source, (style,), (1.0,), config, info, size)


def test_the_cluster_keys_are_not_part_of_the_frame_fingerprint(tmp_path, clip):
    style = write_test_image(tmp_path / "style.png", size=(16, 16))
    local = parse_config({})
    assert mark(clip, style, parse_config({"cluster": OTHER_CLUSTER})) == mark(clip, style, local)
    assert mark(clip, style, parse_config({"video": {"frame_target": 0.5}})) != \
        mark(clip, style, local)


def test_a_stored_job_survives_a_change_of_the_cluster_keys(tmp_path, clip):
    style = write_test_image(tmp_path / "style.png", size=(16, 16))
    work = tmp_path / "work"
    store = FrameStore.open(work, mark(clip, style, parse_config({})))
    store.save(0, np.zeros((4, 4, 3), np.float32), {"loss": 1.0})
    again = FrameStore.open(work, mark(clip, style, parse_config({"cluster": OTHER_CLUSTER})))
    assert again.has(0)


def test_frames_stored_while_the_unit_cut_was_in_video_are_still_resumed(tmp_path, clip):
    """Fingerprints written before the move held video.max_segment_frames/segment_overlap."""
    style = write_test_image(tmp_path / "style.png", size=(16, 16))
    now = mark(clip, style, parse_config({}))
    before = {**now, "frames_from": {**now["frames_from"], "video": {
        **now["frames_from"]["video"], "max_segment_frames": 300, "segment_overlap": 12}}}
    work = tmp_path / "work"
    FrameStore.open(work, before).save(0, np.zeros((4, 4, 3), np.float32), {"loss": 1.0})
    assert FrameStore.stored_fingerprint(work) == now
    assert FrameStore.open(work, now).has(0)


def test_the_plan_records_the_unit_cut_it_was_made_with(clip):
    source, info = clip
    first = parse_config({"cluster": {"max_unit_frames": 8, "unit_overlap": 3}})
    plan = plan_video(source, info, first)
    assert plan["unit_cut"] == {"max_unit_frames": 8, "unit_overlap": 3}
    # Resumed after the configuration changed: the units are those its frames belong to.
    now = parse_config({"cluster": {"max_unit_frames": 300, "unit_overlap": 12}})
    assert unit_cut(plan, now.cluster) == (8, 3)
    assert plan_units(plan, *unit_cut(plan, now.cluster)) == plan_units(plan, 8, 3)
    assert len(plan_units(plan, *unit_cut(plan, now.cluster))) == 3


def test_a_plan_stored_before_the_cut_was_recorded_takes_the_configured_one():
    plan = {"frames": 20, "cuts": []}
    cluster = dataclasses.replace(Config.default().cluster, max_unit_frames=10, unit_overlap=2)
    assert unit_cut(plan, cluster) == (10, 2)

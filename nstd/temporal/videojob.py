"""The skeleton every video job shares, whoever makes its frames (no torch).

    open_video_job:   probe -> output size -> fingerprint -> frame store (resumed, or
                      started over when stale) -> plan (one decode pass, stored once)
    ... the frames: `nstd.temporal.frames.FrameLoop` in this process (the CLI, a local
        worker), or units on Ray actors (`nstd.cluster.driver`); both store every frame as
        it is made and encode in order to a temp file ...
    publish_video:    the temp file has every frame -> rename to the output (never over
                      another file) -> delete the frame store

A local run and a cluster run thus open, plan, resume, verify and publish a video the same
way; only the middle differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nstd.config import ClusterConfig, Config
from nstd.errors import InputError
from nstd.media import container as video
from nstd.media import files as fsutil
from nstd.temporal.plan import (
    cold_frames,
    fingerprint,
    output_size,
    plan_units,
    plan_video,
    unit_cut,
)
from nstd.temporal.store import FrameStore

PlanProgress = Callable[[int, int], None]  # (frames decoded, estimated frame count)


@dataclass(frozen=True)
class VideoSources:
    """What a video job's frames are made from (the fingerprint's inputs)."""

    source: Path
    styles: tuple[Path, ...]
    blend: tuple[float, ...]
    masks: tuple[Path, ...] = ()


@dataclass
class VideoJob:
    """A video job opened on disk: its probe, output size, frame store and plan."""

    info: video.VideoInfo
    size: tuple[int, int]
    store: FrameStore
    plan: dict[str, Any]

    @property
    def frames(self) -> int:
        return int(self.plan["frames"])

    def cold_frames(self) -> set[int]:
        """Where a run without splits starts cold: each shot's first frame."""
        return cold_frames(self.plan)

    def units(self, cluster: ClusterConfig) -> list[Any]:
        """The plan cut into units of work (`nstd.temporal.plan.plan_units`) with the cut
        recorded at first planning (`unit_cut`: a resumed job keeps its units)."""
        return plan_units(self.plan, *unit_cut(self.plan, cluster))


def open_video_job(what: VideoSources, config: Config, work: Path, *, restart: bool = False,
                   replace_stale: bool = False,
                   plan_progress: PlanProgress | None = None) -> VideoJob:
    """Probe, size, fingerprint, open the frame store (`FrameStore.open` decides whether
    stored frames are resumed) and plan once (the plan is stored with the frames, so a
    resumed job keeps its frame count, cuts and pts). `plan_progress(decoded, estimated)`
    is called per frame of the plan pass. A broken input found while planning leaves no work
    folder behind."""
    info = video.probe_video(what.source, config.limits)
    size = output_size(info.width, info.height, config.style.max_side)
    mark = fingerprint(what.source, what.styles, what.blend, config, info, size, what.masks)
    store = FrameStore.open(work, mark, restart=restart, replace_stale=replace_stale)
    if store.plan is None or "pts" not in store.plan:  # (older plans had no pts)
        try:
            report = None if plan_progress is None else (
                lambda count: plan_progress(count, max(count, info.frame_count)))
            store.save_plan(plan_video(what.source, info, config, report))
        except InputError:
            store.remove()
            raise
    assert store.plan is not None
    return VideoJob(info, size, store, store.plan)


def publish_video(job: VideoJob, tmp: Path, output: Path, *, overwrite: bool = False) -> None:
    """Check that the encoded temp file has every frame (OutputError if not), rename it to
    `output`, then delete the frame store: the resume points go only once the result is
    in place."""
    video.verify_video(tmp, job.frames)  # raises OutputError naming what is missing
    fsutil.publish(tmp, output, overwrite=overwrite)
    job.store.remove()


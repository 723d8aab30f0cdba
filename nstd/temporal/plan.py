"""A video job's plan and identity, without torch (the supervisor process uses them too).

    output_size   the stylized frame size
    fingerprint   everything stored frames depend on (a change forbids mixing them in)
    plan_video    one decode pass: exact frame count, scene cuts, each frame's pts
    plan_units    the one cut of a video into units of work: shots, long shots split with an
                  overlap (`nstd.cluster`), longest first; a local run is the case without
                  splits (`cold_frames`: where its shots start)
    unit_cut      the unit length and overlap to cut with: those recorded at first planning
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nstd.config import ClusterConfig, Config, to_mapping
from nstd.media import container as video
from nstd.media import files as fsutil
from nstd.temporal.flow import is_scene_cut, thumbnail
from nstd.text import plural

log = logging.getLogger(__name__)

# Frames of history a range keeps (and a resumed range or unit decodes again before its first
# new frame): the previous frame is what a warm frame starts from.
HISTORY_FRAMES = 5


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) no larger than the input, longest side <= max_side, both even (H.264 yuv420p)."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(round(width * scale)) // 2 * 2)
    h = max(2, int(round(height * scale)) // 2 * 2)
    return w, h


def fingerprint(source: Path, styles: Sequence[Path], blend: Sequence[float], config: Config,
                info: video.VideoInfo, size: tuple[int, int],
                masks: Sequence[Path] = ()) -> dict[str, Any]:
    """Everything the stored frames depend on; any change forbids mixing old frames in.
    `masks`: the style masks' files, if any (a job without masks keeps the fingerprint it
    had before masks existed, so its stored frames stay valid). The `cluster` section is left
    out: where frames are made does not change them, and a Ray job's cut is in its plan."""
    mapping = to_mapping(config)
    stat = source.stat()
    extra = {"masks": [fsutil.sha256_file(p) for p in masks]} if masks else {}
    return {**extra,
        "source": f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}",
        "styles": [fsutil.sha256_file(p) for p in styles],
        "blend": list(blend),
        "size": list(size),
        "frames_from": {"style": mapping["style"],
                        "video": {k: v for k, v in mapping["video"].items()
                                  if k not in ("crf", "preset")},  # encoding only
                        "model": {k: v for k, v in mapping["model"].items()
                                  if k not in ("device", "channels_last", "compile")}},
        "frames_in_source": info.frame_count,
    }


def plan_video(source: Path, info: video.VideoInfo, config: Config,
               progress: video.PacketProgress | None = None) -> dict[str, Any]:
    """One decode pass: the exact frame count (truncation is caught here, before any
    stylization), the scene cuts, and each frame's pts (a unit of work
    seeks to its first frame by it; the encoder stamps frames by it). ``progress`` gets the
    frames decoded so far, per frame (an hour of video plans for minutes). The unit cut of
    the configuration is recorded with it (`unit_cut`)."""
    cuts: list[int] = []
    pts: list[int] = []
    previous = None
    count = 0
    for frame in video.iter_frames(source, info):
        small = thumbnail(frame.rgb)  # scored at this size anyway: decode once, shrink once
        if previous is not None and is_scene_cut(previous, small,
                                                 config.video.scene_cut_threshold):
            cuts.append(frame.index)
        previous = small
        pts.append(int(frame.pts))
        count += 1
        if progress is not None:
            progress(count)
    log.info("%s: %s, %s", source.name, plural(count, "frame"), plural(len(cuts), "scene cut"))
    return {"frames": count, "cuts": cuts, "pts": pts,
            "unit_cut": {"max_unit_frames": config.cluster.max_unit_frames,
                         "unit_overlap": config.cluster.unit_overlap}}


@dataclass(frozen=True)
class Unit:
    """Frames ``start`` .. ``stop - 1`` of one shot as one unit of work.

    ``first`` <= ``start``: a unit split off a long shot begins ``overlap`` frames early,
    cold at ``first``, so it is warm by ``start``; frames ``first`` .. ``start - 1`` are its
    overlap (computed, cross-faded into the previous unit's frames at encoding).
    """

    first: int
    start: int
    stop: int

    @property
    def cold(self) -> tuple[int, ...]:
        return (self.first,)

    @property
    def decode_from(self) -> int:
        return self.first

    def __len__(self) -> int:
        return self.stop - self.first


def plan_units(plan: dict[str, Any], max_segment_frames: int, overlap: int) -> list[Unit]:
    """A planned video as units of work, longest first.

    Shots (from the plan's cuts) are independent: each starts cold. A shot longer than
    ``max_segment_frames`` is split into near-equal pieces no longer than that; every piece
    after the first starts ``overlap`` frames early. A piece is never shorter than the
    overlap (a shot shorter than twice the overlap is never split), so overlaps never overlap.
    """
    frames = int(plan["frames"])
    starts = sorted({0, *(int(c) for c in plan.get("cuts", []))})
    units: list[Unit] = []
    for shot_start, shot_stop in zip(starts, [*starts[1:], frames], strict=True):
        length = shot_stop - shot_start
        if length <= 0:
            continue
        pieces = 1
        if max_segment_frames > 0 and length > max_segment_frames:
            pieces = -(-length // max_segment_frames)  # ceil
            if overlap > 0:
                pieces = max(1, min(pieces, length // overlap))
        bounds = [shot_start + (length * k) // pieces for k in range(pieces + 1)]
        for k in range(pieces):
            start, stop = bounds[k], bounds[k + 1]
            first = max(shot_start, start - overlap) if k else start
            units.append(Unit(first, start, stop))
    return sorted(units, key=lambda u: (-len(u), u.start))


def cold_frames(plan: dict[str, Any]) -> set[int]:
    """The frames that start cold in a run without splits (a local worker, the CLI): the
    first frame of every shot, i.e. of every unit of ``plan_units(plan, 0, 0)``."""
    return {unit.first for unit in plan_units(plan, 0, 0)}


def unit_cut(plan: dict[str, Any], cluster: ClusterConfig) -> tuple[int, int]:
    """(max_unit_frames, unit_overlap) to cut ``plan`` with: the values recorded when it was
    planned, so a resumed job keeps the units its stored frames belong to whatever
    ``cluster:`` says now; the configured ones for a plan stored before they were recorded."""
    recorded = plan.get("unit_cut") or {}
    return (int(recorded.get("max_unit_frames", cluster.max_unit_frames)),
            int(recorded.get("unit_overlap", cluster.unit_overlap)))

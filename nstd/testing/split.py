"""A video stylized as the cluster does it, unit by unit, in this process (seam tests and
bench/seam.py): plan -> `plan_units` -> each unit through `run_range` into one frame store ->
`encode_store` (cross-fading the overlaps). No Ray: only the transport is missing."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from nstd.cluster.actor import ShippedFrames
from nstd.cluster.driver import encode_store
from nstd.config import Config
from nstd.engine.stylizer import StyleTarget, Stylizer
from nstd.media import container as video
from nstd.temporal.frames import FrameRange, StylizedFrame, run_range
from nstd.temporal.plan import output_size, plan_units, plan_video
from nstd.temporal.seam import seam_frame, seam_frames
from nstd.temporal.store import FrameStore


class _Nothing:
    def has(self, index: int) -> bool:
        return False

    def load(self, index: int) -> np.ndarray:  # pragma: no cover - never asked
        raise KeyError(index)

    def record(self, index: int) -> dict[str, Any]:  # pragma: no cover - never asked
        raise KeyError(index)


def run_split(source: Path, output: Path, work: Path, config: Config, stylizer: Stylizer,
              target: StyleTarget, *, fade: str | bool = "seam") -> dict[str, Any]:
    """Stylize ``source`` into ``output`` in units; returns the plan, the units and the
    records of every own frame (index -> record). ``fade``: "seam" (the seam pass, as the
    cluster does), True (cross-fade only) or False (a hard cut at each unit's start)."""
    info = video.probe_video(source, config.limits)
    size = output_size(info.width, info.height, config.style.max_side)
    store = FrameStore.open(work, {"split": str(source)}, restart=True)
    plan = plan_video(source, info, config)
    units = plan_units(plan, config.cluster.max_unit_frames, config.cluster.unit_overlap)
    records: dict[int, dict[str, Any]] = {}

    def sink(frame: StylizedFrame) -> None:
        assert frame.record is not None
        if frame.overlap:
            store.save_side_bytes(frame.index, _png(frame.rgb), "overlap")
        else:
            store.save(frame.index, frame.rgb, frame.record)
            records[frame.index] = frame.record

    for unit in sorted(units, key=lambda u: u.start):
        rng = FrameRange(unit.decode_from, int(plan["pts"][unit.decode_from]), unit.first,
                         unit.start, unit.stop, frozenset(unit.cold))
        run_range(source, info, size, config, stylizer, target, rng, _Nothing(), sink)
    if fade == "seam":
        cuts = set(plan["cuts"])
        for unit in units:
            if unit.first == unit.start:
                continue
            chain_from, begin = seam_frames(unit.first, unit.start, cuts)
            length = unit.start - unit.first
            anchors = {t: seam_frame(store.load(t), store.load_side(t, "overlap"),
                                     t - unit.first, length)
                       for t in range(begin, unit.start)}
            known = {chain_from: (store.frame_bytes(chain_from), {"loss": 0.0})}
            rng = FrameRange(chain_from, int(plan["pts"][chain_from]), begin, begin,
                             unit.start)

            def seam_sink(frame: StylizedFrame) -> None:
                if frame.record is not None:
                    store.save_side_bytes(frame.index, _png(frame.rgb), "seam")

            run_range(source, info, size, config, stylizer, target, rng,
                      ShippedFrames(known), seam_sink, anchors=anchors)
    encode_store(store, plan, units if fade else [], info, size, config, output)
    return {"plan": plan, "units": units, "records": records}


def _png(rgb: np.ndarray) -> bytes:
    from nstd.temporal.store import encode_png

    return encode_png(rgb)


def seam_pairs(units: list[Any], fade: bool) -> set[int]:
    """The frame pairs a seam touches (pair t: frames t, t+1): with the fade, from the pair
    entering an overlap to the pair leaving it; without, the one pair at the boundary."""
    pairs: set[int] = set()
    for unit in units:
        if unit.first < unit.start:
            if fade:
                pairs.update(range(unit.first - 1, unit.start))
            else:
                pairs.add(unit.start - 1)
    return pairs


def measure(source: Path, output: Path, stylizer: Any, target: Any, config: Any,
            seams: set[int]) -> dict[str, Any]:
    """E_t of every frame pair of ``output`` (Lai et al., the source's flow), the seam pairs'
    max and mean over the median of the others, and the mean frame loss (`Stylizer.evaluate`
    of each decoded frame against its resized source frame)."""
    import cv2
    import numpy as np

    from nstd.job import to_tensor
    from nstd.media.container import iter_frames, probe_video
    from nstd.temporal.ewarp import WarpingErrorMeter
    from nstd.temporal.plan import output_size

    info = probe_video(source, config.limits)
    w, h = output_size(info.width, info.height, config.style.max_side)
    meter = WarpingErrorMeter()
    errors: list[float] = []
    losses: list[float] = []
    outs = iter_frames(output, probe_video(output, config.limits))
    for src, out in zip(iter_frames(source, info), outs, strict=True):
        content = cv2.resize(src.rgb, (w, h), interpolation=cv2.INTER_AREA)
        meter.add(content, out.rgb)
        if meter.pairs:
            errors.append(meter.last[0])
        losses.append(stylizer.evaluate(to_tensor(out.rgb.astype(np.float32) / 255.0),
                                        to_tensor(content), target)["total"])
    others = [e for t, e in enumerate(errors) if t not in seams]
    median = statistics.median(others)
    seam = [errors[t] for t in sorted(seams) if t < len(errors)]
    return {"ewarp": float(np.mean(errors)), "median_other_pairs": median,
            "seam_pairs": sorted(seams), "seam_errors": seam,
            "seam_max_ratio": max(seam) / median if seam else None,
            "seam_mean_ratio": float(np.mean(seam)) / median if seam else None,
            "mean_frame_loss": float(np.mean(losses))}


def boundary_ratios(split: dict[str, Any], unsplit: dict[str, Any], units: list[Any]
                    ) -> list[float]:
    """Per unit boundary: the mean E_t of the pairs its seam touches in the split run over
    the mean of the same pairs in the unsplit run (both from `measure` with the same seam
    pairs)."""
    import numpy as np

    where = {t: i for i, t in enumerate(split["seam_pairs"])}
    ratios = []
    for unit in sorted(units, key=lambda u: u.first):
        if unit.first >= unit.start:
            continue
        pairs = [where[t] for t in range(unit.first - 1, unit.start) if t in where
                 and where[t] < len(split["seam_errors"])]
        ratios.append(float(np.mean([split["seam_errors"][i] for i in pairs]))
                      / max(float(np.mean([unsplit["seam_errors"][i] for i in pairs])), 1e-12))
    return ratios

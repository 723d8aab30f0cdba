"""The video job: a temporally stable stylized video, resumable frame by frame.

    `nstd.temporal.videojob.open_video_job`: probe (limits) -> plan (one fast decode pass:
    exact frame count, scene cuts; stored in the work folder) -> for each frame, in order:
        stored already?  load it (resume)                         -- no work redone
        cold (first frame, scene cut, flow unusable)?  coarse-to-fine, style.iterations
        warm?  init from the previous stylized frame (warped along the flow of the *input*
               frames, bicubic); reliable pixels kept within video.temporal_tolerance grey
               levels of where they came from (`nstd.temporal.bounds`); stops once its loss
               reaches the shot's quality (video.frame_target x the reference: the loss of
               the shot's cold frame), at video.frame_iterations, or on early stopping
               (video.init 'content' starts nothing warm: such frames get the cold budget)
        hand the frame to the store+encode thread: stored losslessly (the resume point),
        then encoded
    -> encoder closes a temp file in the output folder -> `videojob.publish_video`: verify
    frame count -> rename -> delete the work folder.

Decoding runs ahead in a thread, the flow for frame t+1 is computed while the engine works on
frame t, and storing and encoding run behind in a thread; all queues are bounded, so memory
does not grow with the length of the video. Nothing is rebuilt per frame: the network, the
style Grams (cached per size in the StyleTarget) and the flow estimator live for the whole job;
per frame the engine computes the content features once and the loop runs.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from nstd.engine.stylizer import Bounds, StyleTarget, Stylizer, TemporalTerm
from nstd.errors import Interrupted, OutputError
from nstd.eta import FrameEta
from nstd.job import (
    Heartbeat,
    JobReport,
    JobRequest,
    ProgressCallback,
    StopCheck,
    to_array,
    to_tensor,
)
from nstd.media import container as video
from nstd.media import files as fsutil
from nstd.progress import JobProgress
from nstd.temporal.bounds import input_change, prior_bounds
from nstd.temporal.flow import FlowEstimator, Motion, Prior, estimate_motion, warp_prior
from nstd.temporal.plan import HISTORY_FRAMES
from nstd.temporal.seam import SeamFrame, pull_weight
from nstd.temporal.videojob import PlanProgress, VideoSources, open_video_job, publish_video
from nstd.text import plural
from nstd.threads import Drain, Prefetch

log = logging.getLogger(__name__)

# Below this fraction of reliable pixels the warped previous frame is mostly wrong (a cut the
# planner missed, a whip pan): start the frame cold instead of dragging garbage along.
MIN_RELIABLE_FRACTION = 0.2
# Bicubic, not bilinear: a bilinear warp by a sub-pixel shift is a blur, and the blurred start
# costs a warm frame several iterations to re-sharpen (on the 96 px benchmark clip, moving 0.5
# px per frame, its loss started 2-3x higher), while the blur accumulated over frames also
# pulls the temporal target away from the style. Bicubic lowered both the mean frame loss (-6%)
# and E_warp (-5%) at the same budget.
PRIOR_INTERPOLATION = cv2.INTER_CUBIC


@dataclass(frozen=True)
class StylizedFrame:
    """A frame on its way to the store and the encoder (or, on an actor, to the supervisor).

    rgb: (H, W, 3) float32 in [0, 1]. record: its losses; None when it was a known (stored)
    frame, loaded rather than made. overlap: a warm-up frame before the range's own frames.
    """

    index: int
    rgb: np.ndarray
    record: dict[str, Any] | None
    pts: int
    overlap: bool = False


@dataclass(frozen=True)
class FrameRange:
    """Which frames of a video one run decodes, computes and owns.

    Decoding starts at ``decode_from`` (seeking by its ``seek_pts``; None: from the file's
    start). Frames ``decode_from`` .. ``first - 1`` must be known (stored) frames: the history
    a resumed range continues from. ``first`` .. ``start - 1`` are overlap frames (computed to
    warm the range up, handed on marked ``overlap``); ``start`` .. ``stop - 1`` are its own.
    ``cold``: frames that start cold besides the plan's shot starts.
    """

    decode_from: int
    seek_pts: int | None
    first: int
    start: int
    stop: int
    cold: frozenset[int] = frozenset()

    @classmethod
    def whole(cls, frames: int) -> FrameRange:
        return cls(0, None, 0, 0, frames)


class KnownFrames(Protocol):
    """Frames already made (`FrameStore`; on an actor, the ones shipped with a unit)."""

    def has(self, index: int) -> bool: ...

    def load(self, index: int) -> np.ndarray: ...

    def record(self, index: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FrameMotion:
    """The motion between the previous input frame and frame t (None at a range's start)."""

    short: Motion | None


def default_work_dir(output: Path) -> Path:
    """Where the CLI keeps a video's stored frames: a hidden folder beside the output."""
    return output.with_name(f".{output.name}.nstd-work")


def stylize_video_file(
    request: JobRequest,
    stylizer: Stylizer,
    target: StyleTarget,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    heartbeat: Heartbeat | None = None,
) -> JobReport:
    what = VideoSources(request.source, request.styles, request.blend, request.masks)
    job = open_video_job(what, request.config, request.work_dir or default_work_dir(request.output),
                         restart=request.restart, replace_stale=request.replace_stale,
                         plan_progress=_plan_progress(progress, heartbeat))
    already = job.store.stored_count()
    if already:
        log.info("%s: resuming, %d of %d frames already stored", request.source.name, already,
                 job.frames)
    loop = FrameLoop(request, stylizer, target, job.store, job.size, job.cold_frames(),
                     job.frames, progress, should_stop, heartbeat)
    tmp = fsutil.temp_path_for(request.output)
    try:
        loop.run(tmp, job.info)
        publish_video(job, tmp, request.output, overwrite=request.overwrite)
    finally:
        fsutil.remove_quietly(tmp)
    return loop.summary()


def _plan_progress(progress: ProgressCallback | None,
                   heartbeat: Heartbeat | None) -> PlanProgress:
    """The plan pass's per-frame report: a heartbeat, and JobProgress in unit 'plan'."""
    started = time.monotonic()

    def report(count: int, total: int) -> None:
        if heartbeat is not None:
            heartbeat()
        if progress is not None:
            progress(JobProgress(done=count, total=total, unit="plan",
                                 elapsed=time.monotonic() - started))

    return report


@dataclass
class _WarmStart:
    """How one frame starts: its mode ('cold', or video.init), the start image (None: the
    content), the temporal box and any seam pulls."""

    mode: str
    init: torch.Tensor | None = None
    bounds: Bounds | None = None
    terms: list[TemporalTerm] = field(default_factory=list)


class FrameLoop:
    """The per-frame loop of one video job (state that lives exactly as long as one run)."""

    def __init__(self, request: JobRequest, stylizer: Stylizer, target: StyleTarget,
                 store: KnownFrames, size: tuple[int, int], cold_frames: set[int],
                 frame_count: int, progress: ProgressCallback | None,
                 should_stop: StopCheck | None, heartbeat: Heartbeat | None = None) -> None:
        self.request = request
        self.video_cfg = request.config.video
        self.stylizer = stylizer
        self.target = target
        self.store = store
        self.size = size
        self.cold_frames = cold_frames
        self.frame_count = frame_count
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        beat = heartbeat
        self.tick = (lambda _progress: beat()) if beat is not None else None
        self.flow = FlowEstimator("medium")
        # (input uint8, stylized float32) of the last HISTORY_FRAMES frames, newest last.
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=HISTORY_FRAMES)
        self.shot_start = 0
        self.overlap_before = 0  # frames before this index are a range's overlap
        # A seam pass (`nstd.temporal.seam`): frame -> its start image and the frames it
        # is pulled towards.
        self.anchors: dict[int, SeamFrame] = {}
        self.records: list[dict[str, Any]] = []
        # The shot's quality: the loss its cold frame reached (None before one is known).
        self.reference: float | None = None
        self.computed = 0
        self.started = time.monotonic()
        self.eta = FrameEta(frame_count, cold_frames, self.started)

    # ----------------------------------------------------------------- frames in

    def _frames(self, info: video.VideoInfo, rng: FrameRange) -> Iterator[video.Frame]:
        w, h = self.size
        for frame in video.iter_frames(self.request.source, info, start_index=rng.decode_from,
                                       start_pts=rng.seek_pts, size=self.size):
            if frame.index >= rng.stop:
                return
            if frame.rgb.shape[1] != w or frame.rgb.shape[0] != h:
                rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
                frame = video.Frame(frame.index, rgb, frame.pts, frame.time_base)
            yield frame

    def _needs_motion(self, index: int) -> bool:
        if index in self.cold_frames or self.store.has(index):
            return False
        return self.video_cfg.init == "warped" or self.video_cfg.temporal_tolerance is not None

    def _motion(self, index: int, current: np.ndarray, recent: list[np.ndarray]) -> FrameMotion:
        """Flows for frame `index` from the inputs only (runs in the flow thread)."""
        return FrameMotion(estimate_motion(recent[-1], current, self.flow) if recent else None)

    # ----------------------------------------------------------------- the loop

    def run(self, tmp: Path, info: video.VideoInfo) -> None:
        """Stylize (or load) every frame in order and encode them into `tmp`."""
        writer = video.VideoWriter(tmp, info, self.size, crf=self.video_cfg.crf,
                                   preset=self.video_cfg.preset)

        encoded, started = [0], time.monotonic()

        def store_and_encode(item: StylizedFrame) -> None:
            if item.record is not None:  # a new frame: its resume point first
                self.store.save(item.index, item.rgb, item.record)
            writer.write(np.round(item.rgb * 255.0).astype(np.uint8), item.pts)
            encoded[0] += 1

        # Storing (16-bit PNG + fsync) and encoding run behind the engine in one thread, in
        # frame order: the engine never waits for the disk. A frame still queued when the
        # process dies is simply computed again by the next run.
        encoder: Drain[StylizedFrame] = Drain(store_and_encode, depth=4, name="store+encode")
        try:
            self.run_range(info, FrameRange.whole(self.frame_count), encoder.put)
            if self.progress is not None:  # every frame made: what is left is the encoder's
                self.progress(JobProgress(done=encoded[0], total=self.frame_count,
                                          unit="encode", elapsed=time.monotonic() - started))
            encoder.close()
            writer.close()
        except BaseException:
            encoder.abort()
            writer.abort()
            raise

    def run_range(self, info: video.VideoInfo, rng: FrameRange,
                  sink: Callable[[StylizedFrame], None]) -> None:
        """Stylize (or load, when known) frames ``rng.decode_from`` .. ``rng.stop - 1`` in
        order, handing each to ``sink`` (called from this thread, in frame order)."""
        self.cold_frames = self.cold_frames | set(rng.cold)
        self.shot_start = rng.decode_from
        self.overlap_before = rng.start
        self.eta = FrameEta(rng.stop, self.cold_frames, time.monotonic(), rng.decode_from)
        decoder = Prefetch(self._frames(info, rng), depth=4, name="decode")
        flows = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flow")
        try:
            inputs: deque[np.ndarray] = deque(maxlen=HISTORY_FRAMES)  # inputs before `pending`
            pending: tuple[video.Frame, Future[FrameMotion] | None] | None = None
            for frame in decoder:
                motion = None
                if self._needs_motion(frame.index):
                    recent = list(inputs) + ([pending[0].rgb] if pending else [])
                    motion = flows.submit(self._motion, frame.index, frame.rgb,
                                          recent[-HISTORY_FRAMES:])
                if pending is not None:
                    inputs.append(pending[0].rgb)
                    self._one(pending[0], pending[1], sink)
                pending = (frame, motion)
            if pending is not None:
                self._one(pending[0], pending[1], sink)
        finally:
            decoder.close()
            flows.shutdown(wait=True, cancel_futures=True)
        expected = rng.stop - rng.decode_from
        if len(self.records) != expected:
            raise OutputError(f"{self.request.source.name}: decoded "
                              f"{plural(len(self.records), 'frame')} "
                              f"but the plan counted {expected}; the file changed")

    def _one(self, frame: video.Frame, motion: Future[FrameMotion] | None,
             sink: Callable[[StylizedFrame], None]) -> None:
        index = frame.index
        if self.store.has(index):
            out = self.store.load(index)
            record = self.store.record(index)
            # A resumed chain continues with the quality its shot was made to.
            self.reference = record.get("reference", self.reference)
            sink(StylizedFrame(index, out, None, frame.pts))
            self.eta.loaded(index, time.monotonic())
        else:
            if self.should_stop():
                raise Interrupted(f"stopped before frame {index + 1} of {self.frame_count}; "
                                  "stored frames are kept and the next run resumes from there")
            out, record = self._stylize(frame, motion.result() if motion else None)
            sink(StylizedFrame(index, out, record, frame.pts, index < self.overlap_before))
            self.computed += 1
            self.eta.computed(index, record["mode"] == "cold", time.monotonic())
        if index in self.cold_frames:
            self.shot_start = index
        self.history.append((frame.rgb, out))
        self.records.append(record)
        if self.progress is not None:
            self.progress(JobProgress(done=index + 1, total=self.frame_count, unit="frame",
                                      elapsed=time.monotonic() - self.started,
                                      loss=record["loss"], done_this_run=self.computed,
                                      detail=record["mode"], remaining=self.eta.remaining(),
                                      modelled=True))

    def _stylize(self, frame: video.Frame,
                 motion: FrameMotion | None) -> tuple[np.ndarray, dict[str, Any]]:
        content = to_tensor(frame.rgb)
        cold = self._starts_cold(frame, motion)
        start = _WarmStart("cold") if cold else self._warm_start(frame, motion)
        if cold:
            self.shot_start = frame.index
            result = self.stylizer.run(content, self.target, progress=self.tick)
            self.reference = result.final_loss
        elif start.init is None:
            # init 'content': nothing carries over, so the frame needs the cold budget (this is
            # the independent per-frame baseline, whatever video.frame_iterations says).
            result = self.stylizer.run(content, self.target, temporal=start.terms,
                                       progress=self.tick, bounds=start.bounds)
        else:
            # Warm: at most frame_iterations, ending as soon as the shot's quality is reached
            # (easy frames stop after a few evaluations, new content gets more) or the loss
            # stops moving.
            cfg = self.video_cfg
            target = None
            if cfg.frame_target > 0 and self.reference is not None:
                target = cfg.frame_target * self.reference
            result = self.stylizer.run(content, self.target, init=start.init,
                                       iterations=cfg.frame_iterations, coarse_to_fine=False,
                                       temporal=start.terms, progress=self.tick,
                                       tolerance=cfg.frame_tolerance,
                                       tolerance_window=cfg.frame_tolerance_window,
                                       bounds=start.bounds, target_loss=target)
        # The engine's 'total' excludes any temporal term, so a frame's loss compares across
        # modes: it is the frame's final_loss.
        record = {"loss": result.final_loss, "losses": dict(result.losses),
                  "iterations": result.iterations,
                  "initial_loss": result.initial_loss, "final_loss": result.final_loss,
                  "mode": start.mode, "seconds": result.seconds, "reference": self.reference}
        return to_array(result.image), record

    def _starts_cold(self, frame: video.Frame, motion: FrameMotion | None) -> bool:
        """A shot's first frame, the first of a range, or one the flow cannot follow."""
        if frame.index in self.cold_frames or not self.history:
            return True
        if motion is not None and motion.short is not None and \
                float(motion.short.mask.mean()) < MIN_RELIABLE_FRACTION:
            log.info("frame %d: only %.0f%% of pixels can be followed from the previous frame; "
                     "starting it cold", frame.index, 100 * float(motion.short.mask.mean()))
            return True
        return False

    def _warm_start(self, frame: video.Frame, motion: FrameMotion | None) -> _WarmStart:
        """Where a warm frame starts (video.init) and what holds it near the previous
        stylized frame: the per-pixel box (`nstd.temporal.bounds`), or a seam pass's pulls."""
        cfg = self.video_cfg
        previous_input, previous = self.history[-1]
        prior = self._prior(motion, previous)
        shift = None
        if motion is not None and motion.short is not None:
            # The start follows a fade or a change of light too (`input_change`).
            shift = input_change(previous_input, frame.rgb, motion.short.flow_bw)
            prior = Prior(np.clip(prior.warped + shift, 0.0, 1.0), prior.mask)
        start = _WarmStart(cfg.init)
        if cfg.init == "warped":
            start.init = to_tensor(prior.warped)
        elif cfg.init == "previous":
            start.init = to_tensor(previous)
        seam = self.anchors.get(frame.index)
        if seam is not None:
            # A seam pass: start from the blend, pulled towards the chain's warped previous
            # frame and towards both units' frames; unboxed, since it must travel from one
            # unit's texture to the other's within the overlap.
            start.init = to_tensor(seam.start)
            weight = pull_weight(self.reference)
            ones = torch.ones(1, 1, *seam.start.shape[:2])
            start.terms = [TemporalTerm(to_tensor(prior.warped),
                                        torch.from_numpy(prior.mask)[None, None], weight)]
            start.terms += [TemporalTerm(to_tensor(a), ones, share * weight)
                            for a, share in seam.pulls]
        elif cfg.temporal_tolerance is not None and motion is not None \
                and motion.short is not None:
            lo, hi = prior_bounds(previous, prior.warped, motion.short.flow_bw, prior.mask,
                                  cfg.temporal_tolerance, shift)
            start.bounds = Bounds(to_tensor(lo), to_tensor(hi))
        return start

    def _prior(self, motion: FrameMotion | None, previous: np.ndarray) -> Prior:
        """The previous stylized frame carried onto this one, with where to trust it."""
        if motion is None or motion.short is None:
            # init 'previous' or 'content' without a temporal constraint: no flow was computed.
            return Prior(previous, np.ones(previous.shape[:2], np.float32))
        return warp_prior(previous, motion.short, PRIOR_INTERPOLATION)

    # ----------------------------------------------------------------- report

    def summary(self) -> JobReport:
        records = self.records
        frames = len(records)

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in records])) if records else 0.0

        terms = sorted({k for r in records for k in r["losses"]})
        losses = {k: float(np.mean([r["losses"].get(k, 0.0) for r in records])) for k in terms}
        seconds = time.monotonic() - self.started
        iterations = int(sum(r["iterations"] for r in records))
        figures = [frame_figures(i, r) for i, r in enumerate(records)]
        h, w = self.size[1], self.size[0]
        return JobReport(
            kind="video", output=self.request.output, seconds=seconds, iterations=iterations,
            initial_loss=mean("initial_loss"), final_loss=mean("final_loss"), losses=losses,
            width=w, height=h, device=str(self.stylizer.device),
            extra={
                "frames": frames,
                "mean_frame_loss": mean("loss"),
                "frames_computed": self.computed,
                "frames_resumed": frames - self.computed,
                "seconds_per_frame": seconds / self.computed if self.computed else 0.0,
                "cold_frames": sum(1 for r in records if r["mode"] == "cold"),
                "stylize_seconds": float(sum(r["seconds"] for r in records)),
                "per_frame": figures,
                # The frame furthest from its shot's quality (loss over the reference).
                "worst_frame_quality": max((f["quality"] for f in figures
                                            if f["quality"] is not None), default=None),
            },
        )


def frame_figures(index: int, record: dict[str, Any]) -> dict[str, Any]:
    """One frame's figures as `--json` lists them: its loss, iterations, whether it started
    cold, and its loss over its shot's reference (the loss of the shot's cold frame; the
    warm frames' stopping target is video.frame_target times it)."""
    reference = record.get("reference")
    return {"frame": index, "loss": record["loss"], "iterations": record["iterations"],
            "cold": record["mode"] == "cold",
            "quality": record["loss"] / reference if reference else None}


def run_range(source: Path | video.InMemory, info: video.VideoInfo, size: tuple[int, int],
              config: Any, stylizer: Stylizer, target: StyleTarget, rng: FrameRange,
              known: KnownFrames,
              sink: Callable[[StylizedFrame], None], *, progress: ProgressCallback | None = None,
              should_stop: StopCheck | None = None, heartbeat: Heartbeat | None = None,
              anchors: dict[int, SeamFrame] | None = None) -> None:
    """One range of a video (a unit of work on an actor, `nstd.cluster.actor`): the frame
    loop of the whole-video job over ``rng`` only, with ``known`` as its stored frames and
    every frame handed to ``sink`` instead of a store and an encoder. ``anchors``: a seam
    pass's frames: start image and pulls (`nstd.temporal.seam.seam_frame`)."""
    # The request only names things here: nothing is written to `output`. ``source`` may be
    # the compressed file in memory (`nstd.media.container.InMemory`, it has a `.name`).
    request = JobRequest(source=source, output=Path(f"{source.name}.range.mp4"),
                         styles=(), blend=(1.0,), config=config)
    loop = FrameLoop(request, stylizer, target, known, size, set(), rng.stop, progress,
                     should_stop, heartbeat)
    loop.anchors = dict(anchors or {})
    loop.run_range(info, rng, sink)

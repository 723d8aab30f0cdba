"""The video job: a temporally stable stylized video, resumable frame by frame.

    probe (limits) -> plan (one fast decode pass: exact frame count, scene cuts, segments;
    stored in the work folder) -> for each frame, in order:
        stored already?  load it (resume)                         -- no work redone
        cold (first frame, scene cut, flow unusable)?  coarse-to-fine, style.iterations
        warm?  init from the previous stylized frame (warped along the flow of the *input*
               frames, bicubic), temporal loss towards it (and an older frame, against
               drift), video.frame_iterations with early stopping over
               video.frame_tolerance_window iterations
               (video.init 'content' starts nothing warm: such frames get the cold budget)
        hand the frame to the store+encode thread: stored losslessly (the resume point),
        then encoded
    -> encoder closes a temp file in the output folder -> verify frame count -> rename
    -> delete the work folder.

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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from nstd.config import Config, to_mapping
from nstd.engine.stylizer import StyleTarget, Stylizer, TemporalTerm
from nstd.errors import InputError, Interrupted, OutputError
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
from nstd.temporal.flow import (
    FlowEstimator,
    Motion,
    Prior,
    combine_long_term,
    estimate_motion,
    is_scene_cut,
    plan_segments,
    thumbnail,
    warp_prior,
)
from nstd.temporal.store import FrameStore
from nstd.threads import Drain, Prefetch

log = logging.getLogger(__name__)

# The long-term prior looks this many frames back (Ruder et al. used J = {1, 2, 5}); a single
# older frame already ties static regions down against slow drift at a third of the flow cost.
LONG_TERM_GAP = 5
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
class _Finished:
    """A frame on its way to the store and the encoder (record None: loaded, not new)."""

    index: int
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    record: dict[str, Any] | None
    pts: int


@dataclass(frozen=True)
class FrameMotion:
    """Priors' motion for frame t: from t-1 (`short`) and from t-LONG_TERM_GAP (`long`)."""

    short: Motion | None
    long: Motion | None


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) no larger than the input, longest side <= max_side, both even (H.264 yuv420p)."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(round(width * scale)) // 2 * 2)
    h = max(2, int(round(height * scale)) // 2 * 2)
    return w, h


def default_work_dir(output: Path) -> Path:
    """Where the CLI keeps a video's stored frames: a hidden folder beside the output."""
    return output.with_name(f".{output.name}.nstd-work")


def fingerprint(request: JobRequest, info: video.VideoInfo, size: tuple[int, int]) -> dict:
    """Everything the stored frames depend on; any change forbids mixing old frames in."""
    config = to_mapping(request.config)
    stat = request.source.stat()
    return {
        "source": f"{request.source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}",
        "styles": [fsutil.sha256_file(p) for p in request.styles],
        "blend": list(request.blend),
        "size": list(size),
        "frames_from": {"style": config["style"],
                        "video": {k: v for k, v in config["video"].items()
                                  if k not in ("crf", "preset")},  # encoding only
                        "model": {k: v for k, v in config["model"].items()
                                  if k not in ("device", "channels_last", "compile")}},
        "frames_in_source": info.frame_count,
    }


def stylize_video_file(
    request: JobRequest,
    stylizer: Stylizer,
    target: StyleTarget,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    heartbeat: Heartbeat | None = None,
) -> JobReport:
    config = request.config
    info = video.probe_video(request.source, config.limits)
    size = output_size(info.width, info.height, config.style.max_side)
    work = request.work_dir or default_work_dir(request.output)
    store = FrameStore.open(work, fingerprint(request, info, size), restart=request.restart)
    if store.plan is None:
        try:
            store.save_plan(plan_video(request.source, info, config,
                                       _plan_progress(progress, heartbeat, info)))
        except InputError:
            store.remove()  # a broken input leaves nothing behind, work folder included
            raise
    plan = store.plan
    assert plan is not None
    frame_count = int(plan["frames"])
    cold_frames = {int(s["start"]) for s in plan["segments"] if s["cold_start"]}
    already = store.stored_count()
    if already:
        log.info("%s: resuming, %d of %d frames already stored", request.source.name, already,
                 frame_count)

    loop = FrameLoop(request, stylizer, target, store, size, cold_frames, frame_count,
                     progress, should_stop, heartbeat)
    tmp = fsutil.temp_path_for(request.output)
    try:
        loop.run(tmp, info)
        if not video.verify_video(tmp, frame_count):
            raise OutputError(f"{request.output.name}: the encoded video does not have the "
                              f"expected {frame_count} frames")
        fsutil.publish(tmp, request.output, overwrite=request.overwrite)
    finally:
        fsutil.remove_quietly(tmp)
    summary = loop.summary()
    store.remove()
    return summary


def plan_video(source: Path, info: video.VideoInfo, config: Config,
               progress: video.PacketProgress | None = None) -> dict[str, Any]:
    """One decode pass: the exact frame count (truncation is caught here, before any
    stylization) and the scene cuts, hence the segments. ``progress`` gets the frames
    decoded so far, per frame (an hour of video plans for minutes)."""
    cuts: list[int] = []
    previous = None
    count = 0
    for frame in video.iter_frames(source, info):
        small = thumbnail(frame.rgb)  # scored at this size anyway: decode once, shrink once
        if previous is not None and is_scene_cut(previous, small,
                                                 config.video.scene_cut_threshold):
            cuts.append(frame.index)
        previous = small
        count += 1
        if progress is not None:
            progress(count)
    segments = plan_segments(cuts, count, config.video.max_segment_frames)
    log.info("%s: %d frames, %d scene cuts, %d segments", source.name, count, len(cuts),
             len(segments))
    return {"frames": count, "cuts": cuts, "segments": [asdict(s) for s in segments]}


def _plan_progress(progress: ProgressCallback | None, heartbeat: Heartbeat | None,
                   info: video.VideoInfo) -> video.PacketProgress:
    """The plan pass's per-frame report: a heartbeat, and JobProgress in unit 'plan'."""
    started = time.monotonic()

    def report(count: int) -> None:
        if heartbeat is not None:
            heartbeat()
        if progress is not None:
            progress(JobProgress(done=count, total=max(count, info.frame_count), unit="plan",
                                 elapsed=time.monotonic() - started))

    return report


class FrameLoop:
    """The per-frame loop of one video job (state that lives exactly as long as one run)."""

    def __init__(self, request: JobRequest, stylizer: Stylizer, target: StyleTarget,
                 store: FrameStore, size: tuple[int, int], cold_frames: set[int],
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
        # (input uint8, stylized float32) of the last LONG_TERM_GAP frames, newest last.
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=LONG_TERM_GAP)
        self.shot_start = 0
        self.records: list[dict[str, Any]] = []
        self.computed = 0
        self.started = time.monotonic()

    # ----------------------------------------------------------------- frames in

    def _frames(self, info: video.VideoInfo) -> Iterator[video.Frame]:
        w, h = self.size
        for frame in video.iter_frames(self.request.source, info):
            if frame.rgb.shape[1] != w or frame.rgb.shape[0] != h:
                rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
                frame = video.Frame(frame.index, rgb, frame.pts, frame.time_base)
            yield frame

    def _needs_motion(self, index: int) -> bool:
        if index in self.cold_frames or self.store.has(index):
            return False
        return self.video_cfg.init == "warped" or self.video_cfg.temporal_weight > 0

    def _motion(self, index: int, current: np.ndarray, recent: list[np.ndarray]) -> FrameMotion:
        """Flows for frame `index` from the inputs only (runs in the flow thread)."""
        short = estimate_motion(recent[-1], current, self.flow) if recent else None
        long = None
        if self.video_cfg.long_term and len(recent) >= LONG_TERM_GAP:
            long = estimate_motion(recent[-LONG_TERM_GAP], current, self.flow)
        return FrameMotion(short, long)

    # ----------------------------------------------------------------- the loop

    def run(self, tmp: Path, info: video.VideoInfo) -> None:
        """Stylize (or load) every frame in order and encode them into `tmp`."""
        writer = video.VideoWriter(tmp, info, self.size, crf=self.video_cfg.crf,
                                   preset=self.video_cfg.preset)

        def store_and_encode(item: _Finished) -> None:
            if item.record is not None:  # a new frame: its resume point first
                self.store.save(item.index, item.rgb, item.record)
            writer.write(np.round(item.rgb * 255.0).astype(np.uint8), item.pts)

        # Storing (16-bit PNG + fsync) and encoding run behind the engine in one thread, in
        # frame order: the engine never waits for the disk. A frame still queued when the
        # process dies is simply computed again by the next run.
        encoder: Drain[_Finished] = Drain(store_and_encode, depth=4, name="store+encode")
        decoder = Prefetch(self._frames(info), depth=4, name="decode")
        flows = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flow")
        try:
            inputs: deque[np.ndarray] = deque(maxlen=LONG_TERM_GAP)  # inputs before `pending`
            pending: tuple[video.Frame, Future[FrameMotion] | None] | None = None
            for frame in decoder:
                motion = None
                if self._needs_motion(frame.index):
                    recent = list(inputs) + ([pending[0].rgb] if pending else [])
                    motion = flows.submit(self._motion, frame.index, frame.rgb,
                                          recent[-LONG_TERM_GAP:])
                if pending is not None:
                    inputs.append(pending[0].rgb)
                    self._one(pending[0], pending[1], encoder)
                pending = (frame, motion)
            if pending is not None:
                self._one(pending[0], pending[1], encoder)
            encoder.close()
            writer.close()
        except BaseException:
            encoder.abort()
            writer.abort()
            raise
        finally:
            decoder.close()
            flows.shutdown(wait=True, cancel_futures=True)
        if len(self.records) != self.frame_count:
            raise OutputError(f"{self.request.source.name}: decoded {len(self.records)} frames "
                              f"but the plan counted {self.frame_count}; the file changed")

    def _one(self, frame: video.Frame, motion: Future[FrameMotion] | None,
             encoder: Drain[_Finished]) -> None:
        index = frame.index
        if self.store.has(index):
            out = self.store.load(index)
            record = self.store.record(index)
            encoder.put(_Finished(index, out, None, frame.pts))
        else:
            if self.should_stop():
                raise Interrupted(f"stopped before frame {index + 1} of {self.frame_count}; "
                                  "stored frames are kept and the next run resumes from there")
            out, record = self._stylize(frame, motion.result() if motion else None)
            encoder.put(_Finished(index, out, record, frame.pts))
            self.computed += 1
        if index in self.cold_frames:
            self.shot_start = index
        self.history.append((frame.rgb, out))
        self.records.append(record)
        if self.progress is not None:
            self.progress(JobProgress(done=index + 1, total=self.frame_count, unit="frame",
                                      elapsed=time.monotonic() - self.started,
                                      loss=record["loss"], done_this_run=self.computed,
                                      detail=record["mode"]))

    def _stylize(self, frame: video.Frame,
                 motion: FrameMotion | None) -> tuple[np.ndarray, dict[str, Any]]:
        content = to_tensor(frame.rgb)
        cfg = self.video_cfg
        cold = frame.index in self.cold_frames or not self.history
        terms: list[TemporalTerm] = []
        init = None
        mode = "cold"
        if not cold and motion is not None and motion.short is not None and \
                float(motion.short.mask.mean()) < MIN_RELIABLE_FRACTION:
            log.info("frame %d: only %.0f%% of pixels can be followed from the previous frame; "
                     "starting it cold", frame.index, 100 * float(motion.short.mask.mean()))
            cold = True
        if not cold:
            previous = self.history[-1][1]
            priors = self._priors(frame.index, motion, previous)
            mode = cfg.init
            if cfg.init == "warped":
                init = to_tensor(priors[0].warped)
            elif cfg.init == "previous":
                init = to_tensor(previous)
            if cfg.temporal_weight > 0:
                terms = [TemporalTerm(target=to_tensor(p.warped),
                                      mask=torch.from_numpy(p.mask)[None, None],
                                      weight=cfg.temporal_weight)
                         for p in priors]
        if cold:
            self.shot_start = frame.index
            result = self.stylizer.run(content, self.target, progress=self.tick)
        elif init is None:
            # init 'content': nothing carries over, so the frame needs the cold budget (this is
            # the independent per-frame baseline, whatever video.frame_iterations says).
            result = self.stylizer.run(content, self.target, temporal=terms, progress=self.tick)
        else:
            # Warm: a short budget with a matching short early-stopping window.
            result = self.stylizer.run(content, self.target, init=init,
                                       iterations=cfg.frame_iterations, coarse_to_fine=False,
                                       temporal=terms, progress=self.tick,
                                       tolerance=cfg.frame_tolerance,
                                       tolerance_window=cfg.frame_tolerance_window)
        # The engine's 'total' excludes the temporal term (reported as 'temporal', warm frames
        # only), so a frame's loss compares across modes: it is the frame's final_loss.
        record = {"loss": result.final_loss, "losses": dict(result.losses),
                  "iterations": result.iterations,
                  "initial_loss": result.initial_loss, "final_loss": result.final_loss,
                  "mode": mode, "seconds": result.seconds}
        return to_array(result.image), record

    def _priors(self, index: int, motion: FrameMotion | None,
                previous: np.ndarray) -> list[Prior]:
        """Warped earlier stylized frames with their masks (nearest first)."""
        if motion is None or motion.short is None:
            # init 'previous' or 'content' without a temporal loss: no flow was computed.
            ones = np.ones(previous.shape[:2], np.float32)
            return [Prior(previous, ones)]
        priors = [warp_prior(previous, motion.short, PRIOR_INTERPOLATION)]
        if motion.long is not None and index - LONG_TERM_GAP >= self.shot_start:
            older = self.history[-LONG_TERM_GAP][1]
            priors.append(warp_prior(older, motion.long, PRIOR_INTERPOLATION))
            priors = combine_long_term(priors)
        return priors

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
            },
        )

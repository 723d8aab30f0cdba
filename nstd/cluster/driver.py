"""One job on the actor pool, run by the supervisor (in a thread of its process; no torch):
the work step of the one job lifecycle (`nstd.daemon.lifecycle`), which checks and reports.

    image:  one unit -> the encoded file comes back -> temp name in the outbox -> rename
    video:  `nstd.temporal.videojob.open_video_job` as a local run does (probe -> plan: one
            decode pass here, frame count, cuts, every frame's pts; kept in the frame store)
            -> units (`nstd.temporal.plan.plan_units`: shots, long shots
            split at cluster.max_unit_frames with cluster.unit_overlap frames of warm-up),
            queued in the order `nstd.cluster.schedule` plans for the pool's actors -> every
            frame that comes back is stored at once (the resume points stay on this disk)
            -> each seam pass as soon as both units beside it are done (the overlap remade
            from the previous unit's frames towards its own, `nstd.temporal.seam`)
            -> meanwhile, an encoder thread writes the frames in order as each becomes final
            (`_Flow`) -> `videojob.publish_video` (every frame there, rename, delete the store).

A unit whose actor died is asked again what is left (`_VideoUnit.build`): its own frames
stored so far are a prefix (frames come back and are stored in order), so it resumes after the
last one, with the stored frames before it as the flow history; a unit that had not stored
its own first frame starts over, overlap included. Events go out through the lifecycle's
`Reporter`, as a worker process sends them, so the supervisor cannot tell the two apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nstd.cluster.pool import ActorPool, UnitTask
from nstd.cluster.schedule import dispatch_order
from nstd.cluster.wire import FrameOut, UnitSpec
from nstd.config import Config
from nstd.daemon.jobspec import JobSpec
from nstd.daemon.lifecycle import EVENT_SECONDS, Done, Reporter, run
from nstd.errors import Interrupted, OutputError
from nstd.temporal.plan import HISTORY_FRAMES

log = logging.getLogger("nstd.cluster")

Emit = Callable[[dict[str, Any]], None]


class JobShipment:
    """A job's files in the object store: the compressed source once, the style files."""

    def __init__(self, spec: JobSpec, key: str) -> None:
        import ray

        self.key = key
        self.source = [ray.put(Path(spec.source).read_bytes())]
        self.styles = {Path(s).name: [ray.put(Path(s).read_bytes())]
                       for s in (*spec.styles, *spec.masks)}  # masks: unique "<i>.<name>"

    def args(self) -> tuple[Any, ...]:
        return (self.source, self.styles)


def run_job(spec: JobSpec, pool: ActorPool, emit: Emit, should_stop: Callable[[], bool],
            *, order: int, key: str) -> None:
    """Run one job on the pool and report ``published`` or ``failed`` through the one job
    lifecycle (`nstd.daemon.lifecycle.run`: the existing-output check, the final check of
    the published file, the outcome event); never raises."""

    def work(config: Config, reporter: Reporter) -> Done:
        if spec.kind == "image":
            return _image(spec, pool, reporter, should_stop, order=order, key=key)
        return _video(spec, config, pool, reporter, should_stop, order=order, key=key)

    run(spec, emit, should_stop, work)


class _Waiter:
    """Collects the end of every unit of a job; the first error wins."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        if count == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        """An error from outside the units (the encoder): the job stops, this error wins."""
        with self.lock:
            if self.error is None:
                self.error = error

    def end(self, error: BaseException | None) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.left -= 1
            if self.left <= 0:
                self.done.set()

    def wait(self, pool: ActorPool, job_id: int, should_stop: Callable[[], bool],
             reporter: Reporter, *, frames: bool) -> None:
        cancelled = False
        while not self.done.wait(EVENT_SECONDS):
            reporter.heartbeat()
            if frames:
                reporter.tick()
            if not cancelled and (should_stop() or self.error is not None):
                cancelled = True
                pool.cancel(job_id)  # stop: between frames; error: the rest is moot
        if self.error is not None:
            raise self.error
        if cancelled or should_stop():
            raise Interrupted("stopped between frames; stored frames are kept and the next "
                              "run resumes from there")


def _base_unit(spec: JobSpec, key: str, **fields: Any) -> UnitSpec:
    return UnitSpec(job_id=spec.job_id, job_key=key, name=Path(spec.source).name,
                    kind=spec.kind, config=spec.config,
                    styles=tuple(Path(s).name for s in spec.styles),
                    masks=tuple(Path(m).name for m in spec.masks), **fields)


def _image(spec: JobSpec, pool: ActorPool, reporter: Reporter,
           should_stop: Callable[[], bool], *, order: int, key: str) -> Done:
    from nstd.media import files as fsutil

    shipment = JobShipment(spec, key)
    unit = _base_unit(spec, key, output_name=Path(spec.output).name)
    result: list[FrameOut] = []
    waiter = _Waiter(1)
    pool.submit(UnitTask(job_id=spec.job_id, order=order, frames=1, stall=False,
                         label=f"{spec.name} (image)",
                         build=lambda: (unit.to_dict(), {}, shipment.args()),
                         on_frame=result.append, on_end=waiter.end))
    waiter.wait(pool, spec.job_id, should_stop, reporter, frames=False)
    if not result:
        raise Interrupted("stopped before the image was done")
    output = Path(spec.output)
    tmp = fsutil.temp_path_for(output)
    try:
        tmp.write_bytes(result[0].png)
        fsutil.publish(tmp, output)
    finally:
        fsutil.remove_quietly(tmp)
    return Done(f"{result[0].record.get('iterations', 0)} iterations, on the cluster")


def _video(spec: JobSpec, config: Config, pool: ActorPool, reporter: Reporter,
           should_stop: Callable[[], bool], *, order: int, key: str) -> Done:
    from nstd.temporal.videojob import VideoSources, open_video_job

    what = VideoSources(Path(spec.source), tuple(Path(s) for s in spec.styles),
                        (1.0,) * len(spec.styles), tuple(Path(m) for m in spec.masks))
    job = open_video_job(what, config, Path(spec.work_dir), restart=spec.restart,
                         replace_stale=True, plan_progress=reporter.plan)
    units = job.units(config.cluster)
    reporter.start_frames(job.frames, job.store.stored_count())  # "frame n/N": units queued
    flow = _Flow(job.store, job.plan, units)
    waiter = _Waiter(len(units) + len(flow.seams))
    _submit_units(spec, key, job, units, pool, reporter, flow, waiter, should_stop, order)
    _encode_and_publish(spec, config, job, flow, waiter, pool, reporter, should_stop)
    return Done(f"{job.frames} frames ({reporter.made} made on the cluster, "
                f"{len(units)} units), {job.size[0]}x{job.size[1]}", job.frames)


def _submit_units(spec: JobSpec, key: str, job: Any, units: list[Any], pool: ActorPool,
                  reporter: Reporter, flow: _Flow, waiter: _Waiter,
                  should_stop: Callable[[], bool], order: int) -> None:
    """Queue the units in the order `dispatch_order` plans for the pool's actors; each seam
    pass is queued once both units beside it are done (`_Joins`)."""
    shipment = JobShipment(spec, key)
    jobs = [_VideoUnit(spec, key, part, job.plan, job.store, job.size, shipment)
            for part in units]
    ranks = dispatch_order([job_unit.left() for job_unit in jobs], len(pool.places))

    def seam_task(part: Any) -> None:
        seam = _SeamUnit(spec, key, part, job.plan, job.store, job.size, shipment)
        pool.submit(UnitTask(job_id=spec.job_id, order=order, frames=part.start - part.first,
                             rank=-1, label=f"{spec.name} seam before frame {part.start + 1}",
                             build=seam.build, on_frame=flow.stored(seam.keep_seam),
                             on_end=joins.seam_end(part)))

    joins = _Joins(flow, waiter, should_stop, seam_task)
    for rank, index in enumerate(ranks):
        job_unit, part = jobs[index], units[index]
        pool.submit(UnitTask(job_id=spec.job_id, order=order, frames=len(part), rank=rank,
                             label=f"{spec.name} frames {part.start + 1}-{part.stop}",
                             build=job_unit.build, on_frame=flow.stored(job_unit.keep(reporter)),
                             on_end=joins.unit_end(part)))


def _encode_and_publish(spec: JobSpec, config: Config, job: Any, flow: _Flow, waiter: _Waiter,
                        pool: ActorPool, reporter: Reporter,
                        should_stop: Callable[[], bool]) -> None:
    """Encode the frames in order while the units run (each as soon as it is final), then
    publish (`nstd.temporal.videojob.publish_video`: every frame there, rename, store gone)."""
    from nstd.media import files as fsutil
    from nstd.temporal.videojob import publish_video

    tmp = fsutil.temp_path_for(Path(spec.output))
    encoder = threading.Thread(target=flow.encode, args=(job.info, job.size, config, tmp),
                               kwargs={"on_error": waiter.fail}, daemon=True,
                               name=f"encode-{spec.job_id}")
    try:
        encoder.start()
        try:
            waiter.wait(pool, spec.job_id, should_stop, reporter, frames=True)
        finally:
            flow.close(aborted=waiter.error is not None or should_stop())
        reporter.stage("encode", flow.written, job.frames, final=True)
        while encoder.is_alive():
            encoder.join(EVENT_SECONDS)
            reporter.heartbeat()
        if flow.error is not None:
            raise flow.error
        publish_video(job, tmp, Path(spec.output))
    finally:
        flow.close(aborted=True)
        encoder.join()
        fsutil.remove_quietly(tmp)


class _VideoUnit:
    """One unit of a video job: what is left of it, and where its frames go."""

    def __init__(self, spec: JobSpec, key: str, part: Any, plan: dict[str, Any], store: Any,
                 size: tuple[int, int], shipment: JobShipment) -> None:
        self.spec, self.key, self.part, self.plan = spec, key, part, plan
        self.store, self.size, self.shipment = store, size, shipment

    def _resume(self) -> int:
        """Its first own frame not stored (frames are stored in order: a prefix is stored)."""
        resume = self.part.start
        while resume < self.part.stop and self.store.has(resume):
            resume += 1
        return resume

    def left(self) -> int:
        """The frames it still has to make, overlap included if it has to start over."""
        resume = self._resume()
        return len(self.part) if resume == self.part.start else self.part.stop - resume

    def build(self) -> tuple[dict[str, Any], dict[int, Any], tuple[Any, ...]] | None:
        part, store = self.part, self.store
        resume = self._resume()
        if resume >= part.stop:
            return None
        pts = self.plan["pts"]
        if resume == part.start:  # nothing of its own stored: from the top, overlap included
            decode_from, first, cold, known = part.decode_from, part.first, part.cold, {}
        else:
            decode_from = max(part.first, resume - HISTORY_FRAMES)
            known = {}
            for index in range(decode_from, resume):
                png = store.frame_bytes(index, "overlap" if index < part.start else None)
                if png is None:  # an overlap frame is gone: the history starts later
                    known.clear()
                    continue
                known[index] = (png, store.record(index) if index >= part.start else {})
            decode_from = min(known) if known else resume
            first, cold = resume, ()
        unit = _base_unit(self.spec, self.key, decode_from=decode_from,
                          seek_pts=int(pts[decode_from]), first=first, start=part.start,
                          stop=part.stop, cold=tuple(cold), size=self.size,
                          known=tuple(sorted(known)))
        return unit.to_dict(), known, self.shipment.args()

    def keep(self, reporter: Reporter) -> Callable[[FrameOut], None]:
        def store_frame(item: FrameOut) -> None:
            if item.overlap:
                self.store.save_side_bytes(item.index, item.png, "overlap")
            else:
                self.store.save_bytes(item.index, item.png, item.record)
                reporter.frame(item.index, item.record.get("loss"))
        return store_frame


class _SeamUnit(_VideoUnit):
    """The seam pass of one split unit: its overlap frames remade, chained from the previous
    unit's frames towards its own (`nstd.temporal.seam`)."""

    def build(self) -> tuple[dict[str, Any], dict[int, Any], tuple[Any, ...]] | None:
        from nstd.temporal.seam import seam_frames

        part, store = self.part, self.store
        chain_from, begin = seam_frames(part.first, part.start, set(self.plan["cuts"]))
        if all(store.has_side(t, "seam") for t in range(begin, part.start)):
            return None  # done before a restart
        pngs = {}
        for t in range(begin, part.start):
            own, overlap = store.frame_bytes(t), store.frame_bytes(t, "overlap")
            if own is None or overlap is None:
                return None  # nothing to join: the frames stay as they are (cross-fade)
            pngs[t] = (own, overlap)
        start_png = store.frame_bytes(chain_from)
        if start_png is None:
            return None
        unit = _base_unit(self.spec, self.key, decode_from=chain_from,
                          seek_pts=int(self.plan["pts"][chain_from]), first=begin,
                          start=begin, stop=part.start, size=self.size, known=(chain_from,),
                          seam_png=pngs, seam_first=part.first)
        known = {chain_from: (start_png, store.record(chain_from))}
        return unit.to_dict(), known, self.shipment.args()

    def keep_seam(self, item: FrameOut) -> None:
        self.store.save_side_bytes(item.index, item.png, "seam")


class _Flow:
    """Which of a job's frames are final, and the encoder that writes them in order as soon
    as they are: a frame is final once stored, an overlap frame once its seam pass ended
    (with the pass's frame, or, when there was none, the cross-fade). Encoding during the
    units leaves only the frames after the last gap for the end of the job."""

    def __init__(self, store: Any, plan: dict[str, Any], units: list[Any]) -> None:
        self.store, self.plan, self.units = store, plan, units
        self.seams = [part for part in units if part.first < part.start]
        self._seam_at = {t: part.start for part in self.seams
                         for t in range(part.first, part.start)}
        self._joined: set[int] = set()  # the starts of the split units whose seam pass ended
        self._cond = threading.Condition()
        self._closed = self._aborted = False
        self.written = 0  # frames handed to the encoder
        self.error: BaseException | None = None

    def stored(self, keep: Callable[[FrameOut], None]) -> Callable[[FrameOut], None]:
        def keep_and_tell(item: FrameOut) -> None:
            keep(item)
            with self._cond:
                self._cond.notify_all()
        return keep_and_tell

    def joined(self, part: Any) -> None:
        with self._cond:
            self._joined.add(part.start)
            self._cond.notify_all()

    def close(self, *, aborted: bool) -> None:
        """Every unit has ended (or the job stops: ``aborted``); nothing more will come."""
        with self._cond:
            self._closed = True
            self._aborted = self._aborted or aborted
            self._cond.notify_all()

    def _final(self, index: int) -> bool:
        seam = self._seam_at.get(index)
        return (seam is None or seam in self._joined) and self.store.has(index)

    def _wait_final(self, index: int) -> None:
        with self._cond:
            while not self._final(index):
                if self._aborted:
                    raise Interrupted("the job stopped while its frames were being encoded")
                if self._closed:
                    raise OutputError(f"frame {index + 1} was never stored")
                self._cond.wait(EVENT_SECONDS)
            self.written = index + 1

    def encode(self, info: Any, size: tuple[int, int], config: Config, tmp: Path, *,
               on_error: Callable[[BaseException], None]) -> None:
        """Encode every frame into ``tmp`` as it becomes final (the encoder thread)."""
        try:
            encode_store(self.store, self.plan, self.units, info, size, config, tmp,
                         ready=self._wait_final)
        except BaseException as exc:  # noqa: BLE001 - reported to the job, not raised here
            self.error = exc
            if not self._aborted:
                on_error(exc)


class _Joins:
    """Submits each seam pass as soon as both units beside it are done, not after the last
    unit of the job: the passes then overlap the other units, and the encoder is not held
    up at the seams until the end."""

    def __init__(self, flow: _Flow, waiter: _Waiter, should_stop: Callable[[], bool],
                 submit: Callable[[Any], None]) -> None:
        self.flow, self.waiter, self.should_stop, self.submit = flow, waiter, should_stop, submit
        self._before = {part.stop: part for part in flow.units}  # a piece's predecessor
        self._done: set[Any] = set()
        self._resolved: set[Any] = set()
        self._lock = threading.Lock()

    def unit_end(self, part: Any) -> Callable[[BaseException | None], None]:
        def end(error: BaseException | None) -> None:
            # A cancelled unit ends with None too; the job is stopping then.
            ok = error is None and not self.should_stop() and self.waiter.error is None
            decided: list[tuple[Any, bool]] = []
            with self._lock:
                if ok:
                    self._done.add(part)
                for seam in self.flow.seams:
                    before = self._before[seam.start]
                    if seam in self._resolved or part not in (seam, before):
                        continue
                    if not ok or (seam in self._done and before in self._done):
                        self._resolved.add(seam)
                        decided.append((seam, ok))
            self.waiter.end(error)  # (its seams are still counted: the job is not done yet)
            for seam, go in decided:
                if go:
                    self.submit(seam)
                else:  # the job fails or stops: this seam is never joined
                    self.flow.joined(seam)
                    self.waiter.end(None)
        return end

    def seam_end(self, part: Any) -> Callable[[BaseException | None], None]:
        def end(error: BaseException | None) -> None:
            self.flow.joined(part)
            self.waiter.end(error)
        return end


def encode_store(store: Any, plan: dict[str, Any], units: list[Any], info: Any,
                 size: tuple[int, int], config: Config, tmp: Path, *,
                 heartbeat: Callable[[], None] | None = None,
                 ready: Callable[[int], None] | None = None) -> None:
    """Encode every stored frame in order into ``tmp``: an overlap frame is its seam pass's
    frame, else the cross-fade of both units' frames. ``ready(index)`` (if given) blocks
    until frame ``index`` is final, or raises."""
    from nstd.media.container import VideoWriter
    from nstd.temporal.seam import crossfade

    fades: dict[int, tuple[int, int]] = {}  # frame -> (position in its overlap, overlap length)
    for part in units:
        length = part.start - part.first
        for position, index in enumerate(range(part.first, part.start)):
            fades[index] = (position, length)
    writer = VideoWriter(tmp, info, size, crf=config.video.crf, preset=config.video.preset)
    last = time.monotonic()
    try:
        for index in range(int(plan["frames"])):
            if ready is not None:
                ready(index)
            if index in fades and store.has_side(index, "seam"):
                rgb = store.load_side(index, "seam")  # remade by the seam pass
            elif index in fades and store.has_side(index, "overlap"):
                position, length = fades[index]
                rgb = crossfade(store.load(index), store.load_side(index, "overlap"),
                                position, length)
            else:
                rgb = store.load(index)
            writer.write(np.round(rgb * 255.0).astype(np.uint8), int(plan["pts"][index]))
            if heartbeat is not None and time.monotonic() - last >= EVENT_SECONDS:
                last = time.monotonic()
                heartbeat()
        writer.close()
    except BaseException:
        writer.abort()
        raise

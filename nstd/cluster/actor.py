"""The Ray actor: one per GPU (or per CPU slot), the network loaded once, units run in turn.

The class is plain Python; `nstd.cluster.pool` wraps it with ``ray.remote`` and the resources
of its place (``num_gpus=1`` on a GPU cluster). Everything the actor reads comes with the unit:
the compressed source through the object store (cached once per node on local disk, so the
actors of a node fetch it once), the style files as bytes, and for a resumed unit the stored
frames it continues from. It returns stylized frames, never writes a result: the supervisor
stores them, and its disk holds every resume point.

Simulated GPU (``simulate_seconds > 0``, `nstd.cluster.backend.SIMULATE_ENV`): no network, no
torch; each computed frame costs a fixed sleep and is the resized input frame. It makes the
scheduling measurable on a machine without GPUs (bench/scaling.py).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nstd.cluster.wire import FrameOut, UnitSpec
from nstd.config import parse_config
from nstd.errors import Interrupted
from nstd.faults import failpoint
from nstd.temporal.store import decode_png, encode_png

log = logging.getLogger("nstd.actor")

CACHE_ROOT = Path(tempfile.gettempdir()) / "nstd-ray"  # per node: sources and styles by job
CACHE_KEEP = 4  # jobs whose files stay cached on a node
QUEUE_DEPTH = 8  # frames computed ahead of the network (bounded: memory does not grow)


class ShippedFrames:
    """`KnownFrames` over the stored frames shipped with a resumed unit."""

    def __init__(self, frames: dict[int, tuple[bytes, dict[str, Any]]]) -> None:
        self._frames = frames

    def has(self, index: int) -> bool:
        return index in self._frames

    def load(self, index: int) -> np.ndarray:
        return decode_png(self._frames[index][0])

    def record(self, index: int) -> dict[str, Any]:
        return self._frames[index][1]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "x"


def node_file(job_key: str, name: str, fetch: Any) -> Path:
    """This node's copy of a job's file, fetched (``fetch()`` -> bytes) only when missing.

    Written under a temp name and renamed, so actors of one node racing for it see either no
    file or the whole file; the oldest jobs' folders are dropped beyond `CACHE_KEEP`.
    """
    folder = CACHE_ROOT / _safe(job_key)
    path = folder / _safe(name)
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    data = fetch()
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    _trim_cache(keep=folder)
    return path


def _trim_cache(keep: Path) -> None:
    try:
        folders = sorted((p for p in CACHE_ROOT.iterdir() if p.is_dir() and p != keep),
                         key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in folders[:max(0, len(folders) - (CACHE_KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)


class StyleActor:
    """Runs units (`run`) on one device; `stop(job_id)` ends that job's unit between frames."""

    def __init__(self, config: dict[str, Any], threads: int = 1,
                 simulate_seconds: float = 0.0) -> None:
        self.config = parse_config(config)
        self.simulate = float(simulate_seconds)
        self.wire_bits = 8 if self.config.cluster.wire_format == "png8" else 16
        self._stopped: set[int] = set()
        self._probed: dict[str, Any] = {}  # job key -> VideoInfo: probed once per job
        self._engines_by_job: dict[str, tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()
        self.engines: Any = None
        self.device = "simulated"
        # Every unit's work runs on this one thread, which also loaded the network: torch's
        # OpenMP team then belongs to one long-lived thread, as in a worker process.
        self._engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        if self.simulate <= 0:
            self._engine_thread.submit(self._load, threads).result()

    def _load(self, threads: int) -> None:
        import torch

        from nstd.daemon.engines import EngineCache

        torch.set_num_threads(max(1, threads))
        self.engines = EngineCache.load(self.config.model)
        self.engines.stylizer(self.config)  # the default extractor before "ready"
        self.device = str(self.engines.device)

    def ready(self) -> dict[str, Any]:
        """Where this actor runs: device, pid and node."""
        return {"device": self.device, "pid": os.getpid(), "node": socket.gethostname()}

    def stop(self, job_id: int) -> None:
        with self._lock:
            self._stopped.add(job_id)

    def resume(self, job_id: int) -> None:
        with self._lock:
            self._stopped.discard(job_id)

    def _stopping(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._stopped

    def run(self, unit: dict[str, Any], source: list[Any], styles: dict[str, Any],
            known: dict[int, tuple[bytes, dict[str, Any]]]) -> Iterator[FrameOut]:
        """Stylize one unit; yields its frames in order (overlap frames first, marked).

        ``source``: ``[ObjectRef]`` of the compressed file, fetched only when this node has
        no copy yet; ``styles``: style name -> ``[ObjectRef]`` of its bytes, likewise.
        """
        spec = UnitSpec(**{**unit, "styles": tuple(unit["styles"]), "cold": tuple(unit["cold"]),
                           "known": tuple(unit["known"]), "size": tuple(unit["size"]),
                           "masks": tuple(unit.get("masks", ()))})
        self.resume(spec.job_id)
        import ray

        path = node_file(spec.job_key, spec.name, lambda: ray.get(source[0]))
        style_paths = [node_file(spec.job_key, f"style-{name}",
                                 lambda ref=styles[name]: ray.get(ref[0]))
                       for name in spec.styles]
        style_paths += [node_file(spec.job_key, f"mask-{name}",
                                  lambda ref=styles[name]: ray.get(ref[0]))
                        for name in spec.masks]  # after the styles: see _request
        failpoint("actor.unit")
        out: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        done = object()

        def work() -> None:
            try:
                if spec.kind == "image":
                    out.put(self._image(spec, path, style_paths))
                elif self.simulate > 0:
                    self._simulated_range(spec, path, out.put)
                else:
                    self._range(spec, path, style_paths, ShippedFrames(known), out.put)
            except Interrupted:
                pass  # asked to stop: the frames sent so far are stored, the rest waits
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer to raise
                out.put(exc)
            out.put(done)

        running = self._engine_thread.submit(work)
        while True:
            item = out.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            failpoint("actor.frame")
            if not isinstance(item, FrameOut):  # a StylizedFrame: PNG here, off the engine's
                # thread (at 1080p the encode takes ~0.5 s on one core: bench/wire_bytes.py)
                item = FrameOut(item.index, encode_png(item.rgb, self.wire_bits), item.record,
                                item.overlap)
            yield item
        running.result()

    # ----------------------------------------------------------------- the work

    def _engine(self, spec: UnitSpec, path: Path, styles: list[Path]) -> tuple[Any, Any, Any]:
        """(config, Stylizer, StyleTarget) of a job: built at its first unit on this actor
        (the style Grams cost a network pass), reused by the next ones."""
        from nstd.pipeline import load_style_target

        cached = self._engines_by_job.get(spec.job_key)
        if cached is None:
            config = parse_config(spec.config)
            stylizer = self.engines.stylizer(config)
            request = _request(spec, path, path.with_suffix(".out.mp4"), styles, config)
            cached = (config, stylizer, load_style_target(stylizer, request))
            self._engines_by_job = {spec.job_key: cached}  # the latest job only
        return cached

    def _probe(self, key: str, path: Path, config: Any) -> Any:
        from nstd.media.container import probe_video

        info = self._probed.get(key)
        if info is None:
            info = probe_video(path, config.limits)
            self._probed = {key: info}  # the latest job only
        return info

    def _image(self, spec: UnitSpec, path: Path, styles: list[Path]) -> FrameOut:
        if self.simulate > 0:
            time.sleep(self.simulate)
            return FrameOut(0, path.read_bytes(), {"iterations": 0, "final_loss": 0.0,
                                                   "seconds": self.simulate})
        from nstd.pipeline import load_style_target, stylize_image_file

        config = parse_config(spec.config)
        stylizer = self.engines.stylizer(config)
        with tempfile.TemporaryDirectory(prefix="nstd-image-") as folder:
            output = Path(folder) / _safe(spec.output_name or f"out{path.suffix}")
            request = _request(spec, path, output, styles, config)
            target = load_style_target(stylizer, request)
            report = stylize_image_file(request, stylizer, target, None,
                                        lambda: self._stopping(spec.job_id))
            return FrameOut(0, output.read_bytes(),
                            {"iterations": report.iterations, "final_loss": report.final_loss,
                             "seconds": report.seconds, "width": report.width,
                             "height": report.height})

    def _range(self, spec: UnitSpec, path: Path, styles: list[Path], known: ShippedFrames,
               put: Any) -> None:
        from nstd.temporal.frames import FrameRange, run_range

        config, stylizer, target = self._engine(spec, path, styles)
        info = self._probe(spec.job_key, path, config)
        rng = FrameRange(decode_from=spec.decode_from, seek_pts=spec.seek_pts, first=spec.first,
                         start=spec.start, stop=spec.stop, cold=frozenset(spec.cold))
        anchors = None
        if spec.seam_png:
            from nstd.temporal.seam import seam_frame

            length = spec.stop - spec.seam_first
            anchors = {t: seam_frame(decode_png(a), decode_png(b), t - spec.seam_first,
                                     length)
                       for t, (a, b) in spec.seam_png.items()}

        def sink(frame: Any) -> None:
            if frame.record is None or frame.index < spec.first:
                return  # shipped history: the supervisor has it already
            put(frame)  # encoded to PNG by `run`'s thread, not this one (the engine's)

        run_range(path, info, tuple(spec.size), config, stylizer, target, rng, known, sink,
                  should_stop=lambda: self._stopping(spec.job_id), anchors=anchors)

    def _simulated_range(self, spec: UnitSpec, path: Path, put: Any) -> None:
        from nstd.media.container import iter_frames

        config = parse_config(spec.config)
        info = self._probe(spec.job_key, path, config)
        w, h = spec.size
        for frame in iter_frames(path, info, start_index=spec.decode_from,
                                 start_pts=spec.seek_pts):
            if frame.index >= spec.stop:
                break
            if frame.index < spec.first:
                continue
            if self._stopping(spec.job_id):
                return
            time.sleep(self.simulate)
            rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
            record = {"loss": 0.0, "losses": {}, "iterations": 0, "initial_loss": 0.0,
                      "final_loss": 0.0, "mode": "simulated", "seconds": self.simulate}
            put(FrameOut(frame.index, encode_png(rgb.astype(np.float32) / 255.0,
                                                   self.wire_bits), record,
                         frame.index < spec.start))


def _request(spec: UnitSpec, source: Path, output: Path, files: list[Path],
             config: Any) -> Any:
    """The engine's `JobRequest` for a unit: ``files`` are its style files, then its mask
    files (one per style when the job has masks); the styles at equal weight."""
    from nstd.job import JobRequest

    count = len(spec.styles)
    return JobRequest(source=source, output=output, styles=tuple(files[:count]),
                      blend=(1.0,) * count, config=config, masks=tuple(files[count:]))

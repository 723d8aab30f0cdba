"""The live preview of a running job, written by its worker for the status page.

    <daemon.work>/<job id>/source.jpg    the source (a video's first frame), once per job
    <daemon.work>/<job id>/preview.jpg   the latest stylized frame, at most every PREVIEW_SECONDS

Both at most PREVIEW_SIDE px, written under a temporary name and renamed (the page's server
may read them at any moment). Videos only get a stylized preview: an image's current iterate
is not handed out of the optimizer, so an image job shows its source until its result is done.
The work folder goes with the job when it finishes, and these with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREVIEW_SECONDS = 2.0
PREVIEW_SIDE = 256
FRAMES_FOLDER = "frames"  # nstd.temporal.store: <store>/frames/000042.png (16-bit RGB)


class Preview:
    """Writes ``source.jpg`` and ``preview.jpg`` for one job; never raises (a preview is not
    worth failing a job for: trouble is logged once)."""

    def __init__(self, source: Path, store: Path, job_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.store, self.job_dir = source, store, job_dir
        self.clock = clock
        self.last = float("-inf")
        self.wrote_source = False
        self.warned = False

    @classmethod
    def for_spec(cls, spec: Any) -> Preview:
        store = Path(spec.work_dir)
        return cls(Path(spec.source), store, store.parent)

    def update(self, unit: str, done: int) -> None:
        """Called with each progress report: ``unit`` 'frame' means frame ``done - 1`` is
        stored."""
        try:
            if not self.wrote_source:
                self.wrote_source = True
                from nstd.media.container import first_frame
                from nstd.media.images import write_jpeg

                write_jpeg(first_frame(self.source, PREVIEW_SIDE), self.job_dir / "source.jpg",
                           PREVIEW_SIDE)
            if unit != "frame" or done <= 0 or self.clock() - self.last < PREVIEW_SECONDS:
                return
            frame = self.store / FRAMES_FOLDER / f"{done - 1:06d}.png"
            if frame.is_file():
                self.last = self.clock()
                self._write_frame(frame)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            if not self.warned:
                self.warned = True
                log.warning("no live preview for %s: %s: %s", self.source.name,
                            type(exc).__name__, exc)

    def _write_frame(self, frame: Path) -> None:
        import cv2
        import numpy as np
        from PIL import Image

        from nstd.media.images import write_jpeg

        pixels = cv2.imread(str(frame), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            return  # renamed away meanwhile
        if pixels.dtype == np.uint16:
            pixels = (pixels >> 8).astype(np.uint8)
        rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        write_jpeg(Image.fromarray(rgb), self.job_dir / "preview.jpg", PREVIEW_SIDE)

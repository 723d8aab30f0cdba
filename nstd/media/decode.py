"""Decoding a video into upright RGB frames, streaming, and a first frame for display.

Decisions, each for a reason:

- **Rotation.** `iter_frames` returns frames already turned upright (by the rotation
  `probe_video` read), so the stylizer and the optical flow only ever see upright images.
- **Timing.** Every frame keeps its own pts in the source time base: variable frame rate
  survives, and the writer gives each output frame the same timestamp.
- **Colour.** Decoding honours the stream's colour tags.
- **Truncation.** A decode that fails part-way, or ends noticeably short of what the probe
  counted, raises an `InputError` saying how much was decodable of how much expected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import PIL.Image

from nstd.errors import InputError
from nstd.media.kinds import VIDEO_EXTENSIONS
from nstd.media.probe import VideoInfo
from nstd.media.source import (
    InMemory,
    Source,
    as_source,
    decoder_cap,
    limit_decoder,
    open_input,
    why,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One decoded frame, upright.

    rgb: (H, W, 3) uint8 RGB at the displayed size. pts: in `time_base` units (the source
    stream's). duration: in `time_base` units, or None if the container does not say.
    """

    index: int
    rgb: np.ndarray
    pts: int
    time_base: Fraction
    duration: int | None = None

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


def _conversion(info: VideoInfo, size: tuple[int, int] | None) -> dict[str, Any]:
    """The stored-orientation RGB size (and scaler) frames are converted to: square pixels
    at the coded height, or ``size`` (w, h, upright) when that is smaller."""
    full = {"width": info.square_width, "height": info.coded_height}
    if size is None:
        return full
    w, h = size if info.rotation in (0, 180) else (size[1], size[0])
    if w >= full["width"] or h >= full["height"]:
        return full  # never enlarged here: the caller decides what to do with a small source
    return {"width": w, "height": h, "interpolation": "AREA"}


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored frame (H, W, 3) counter-clockwise by `rotation` degrees."""
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))



def iter_frames(path: Source, info: VideoInfo, *, start_index: int = 0,
                start_pts: int | None = None,
                size: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Decode the video stream as upright RGB frames, streaming (memory does not grow).

    Yields Frame(index, rgb (H,W,3) uint8 at info.width x info.height, pts, time_base,
    duration); with ``size`` (w, h, upright) smaller than that, at ``size`` instead: FFmpeg
    converts each decoded picture straight to the small RGB frame (area averaging), so a
    4K or 8K source never exists as a full-size RGB array (8K: 100 MB per frame, times the
    decode queue). The decoder is flushed at the end so the last frames are not lost. Raises
    InputError if decoding fails part-way or ends noticeably short of `info` (truncated or
    corrupt), saying how many frames and seconds were decodable of how many expected.

    ``start_index`` > 0 with its frame's ``start_pts`` (from the plan pass): seek to the
    keyframe at or before it and decode forward from there, yielding frames from
    ``start_index`` on with their true indices (a unit of work on another machine decodes only
    its own part). Frames are the ones a decode from the start gives (the decoder restarts at
    a keyframe); where the seek cannot be trusted (no timestamps, it landed after the frame),
    the file is decoded from the start and the frames before ``start_index`` are skipped.
    """
    if start_index > 0:
        yield from _iter_from(as_source(path), info, start_index, start_pts, size)
        return
    yield from _iter_all(as_source(path), info, size=size)


def _iter_from(path: Path | InMemory, info: VideoInfo, start_index: int,
               start_pts: int | None, size: tuple[int, int] | None) -> Iterator[Frame]:
    if start_pts is not None:
        seeked = _iter_all(path, info, seek_pts=start_pts, size=size)
        first = next(seeked, None)
        if first is not None and first.pts == start_pts:
            offset = start_index - first.index
            yield Frame(start_index, first.rgb, first.pts, first.time_base, first.duration)
            for frame in seeked:
                yield Frame(frame.index + offset, frame.rgb, frame.pts, frame.time_base,
                            frame.duration)
            return
        seeked.close()
        log.info("%s: seeking to frame %d failed; decoding from the start", path.name,
                 start_index)
    for frame in _iter_all(path, info, size=size):
        if frame.index >= start_index:
            yield frame


def _iter_all(path: Path | InMemory, info: VideoInfo, seek_pts: int | None = None,
              size: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Every frame from the start, or (``seek_pts``) from the keyframe before that pts on,
    skipping frames before it: indices then count from 0 at the frame at ``seek_pts``, and
    the decoded count is not checked against the probe. ``size``: see `iter_frames`."""
    convert = _conversion(info, size)
    # Frames may not grow far past what was probed: a stream that switches to a huge size
    # mid-way fails instead of allocating it.
    max_pixels = decoder_cap(info.coded_width * info.coded_height)
    container, _ = open_input(path, max_pixels)
    index = 0
    last_end: int | None = None
    first_pts: int | None = None
    with container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        limit_decoder(stream, max_pixels)
        time_base = Fraction(stream.time_base or info.time_base)
        step = max(1, round(1 / (info.rate * time_base))) if info.rate else 1
        last_pts: int | None = None
        try:
            if seek_pts is not None:
                container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                # The final empty packet flushes the decoder: it yields the delayed frames.
                for frame in packet.decode():
                    pts = frame.pts
                    if seek_pts is not None:
                        if pts is None:
                            return  # no timestamps to find our frame by: caller falls back
                        if pts < seek_pts:
                            continue  # between the keyframe and our first frame
                    if pts is None:
                        pts = (last_pts + step) if last_pts is not None else 0
                    duration = int(frame.duration) if frame.duration else None
                    if first_pts is None:
                        first_pts = pts
                    last_pts = pts
                    last_end = pts + (duration or step)
                    # Scaled to square pixels (and any mid-stream size change undone), or
                    # straight to the requested smaller size.
                    rgb = frame.to_ndarray(format="rgb24", **convert)
                    yield Frame(
                        index=index,
                        rgb=_upright(rgb, info.rotation),
                        pts=int(pts),
                        time_base=time_base,
                        duration=duration,
                    )
                    index += 1
        except av.FFmpegError as exc:
            seconds = _span(first_pts, last_end, time_base)
            raise InputError(
                f"{path} is truncated or corrupt: decoding failed after {index} of"
                f" {info.frames} frames ({seconds:.2f} of {info.duration:.2f} s) ({why(exc)})"
            ) from None
    if seek_pts is None:
        _check_decoded(path, info, index, _span(first_pts, last_end, time_base))


def _span(first: int | None, end: int | None, time_base: Fraction) -> float:
    if first is None or end is None:
        return 0.0
    return float((end - first) * time_base)


def _check_decoded(path: Path | InMemory, info: VideoInfo, decoded: int,
                   seconds: float) -> None:
    if decoded == 0:
        raise InputError(f"{path} has no decodable video frames")
    shortfall = info.frames - decoded
    if shortfall <= 0:
        return
    tolerance = max(2.0 * info.frame_interval, 0.1)
    reaches_end = seconds >= info.duration - tolerance
    # A few frames may legitimately vanish (broken links after an edit) and an estimated
    # count may be off; a missing tail, or a large gap in an exact count, means data is lost.
    if reaches_end and (not info.frames_exact or shortfall <= max(2, info.frames // 100)):
        log.warning("%s: decoded %d of %d frames", path.name, decoded, info.frames)
        return
    raise InputError(
        f"{path} is truncated or corrupt: only {decoded} of {info.frames} frames"
        f" ({seconds:.2f} of {info.duration:.2f} s) could be decoded"
    )


def first_frame(path: Path, side: int = 256) -> PIL.Image.Image:
    """An image file, or a video's first frame, as an RGB Pillow image: the picture of a job
    the status page shows, at about ``side`` px (a JPEG is decoded at a reduced scale).

    Unlike `iter_frames`, no size limit or rotation: the picture is only shrunk for display.
    """
    if Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return frame.to_image().convert("RGB")
        raise ValueError("no video frame")
    with PIL.Image.open(path) as image:
        image.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a low scale
        return image.convert("RGB")

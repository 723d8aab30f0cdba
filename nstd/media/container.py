"""Video decoding and encoding with PyAV (its wheel bundles FFmpeg; there is no ffmpeg binary).

Decisions, each for a reason:

- **Container sniffing.** Only MP4/MOV, Matroska/WebM and AVI are opened, and the demuxer is
  chosen from the file's magic bytes, never by FFmpeg's auto-probe: a text file named
  `x.mp4` holding an HLS or concat playlist would otherwise make FFmpeg open other files.
- **Limits before decoding.** File size, pixel count, duration and frame count are checked
  from the header (and the packet scan) before a single frame is converted.
- **Truncation.** `probe_video` scans every video packet (demuxing only, no decoding: I/O
  bound and cheap next to stylization) and compares what is present with what the header
  promises (MP4 sample count, stream duration, Matroska DURATION tag). `iter_frames` checks
  again after decoding. An interrupted copy fails with an `InputError` that says how many
  frames/seconds were decodable of how many expected; it is never published as complete.
  A MP4 cut before its index (`moov` at the end) cannot be opened at all and fails at once.
- **Rotation.** Phones store landscape pixels plus a display matrix. `probe_video` reads
  the rotation (degrees counter-clockwise, PyAV/FFmpeg convention) from the first decoded
  frame's display-matrix side data; `iter_frames` returns frames already turned upright, and
  `VideoWriter` writes upright frames with *no* rotation tag. The displayed orientation is
  unchanged and the stylizer (and the optical flow) only ever sees upright images.
- **Timing.** Every frame keeps its own pts in the source time base (variable frame rate
  survives); the writer uses the same time base (and MP4 track timescale where possible),
  so output timestamps equal input timestamps.
- **Audio.** Source audio packets are copied untouched into the output (remux). Only when the
  output container refuses a codec (e.g. PCM in MP4) is that stream re-encoded to AAC, with a
  warning in the log. Whether a codec fits is tested by writing a header into memory, not
  from a hard-coded list (FFmpeg's MP4 muxer accepts Opus, Vorbis and FLAC nowadays).
- **Even dimensions.** H.264 yuv420p needs even sizes; the writer rounds down to even and
  crops the last row/column of an odd-sized frame (lossless for the rest, no resampling).
- **Colour.** Decoding honours the stream's colour tags; encoding converts with the BT.709
  matrix (limited range) and tags the output as BT.709 so players do not guess.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import PIL.Image

from nstd.errors import InputError, OutputError, TransientError, UsageError
from nstd.media import files as fsutil
from nstd.media.images import check_pixels
from nstd.media.kinds import VIDEO_EXTENSIONS  # noqa: F401 - its home before media.kinds
from nstd.media.signature import container_format
from nstd.text import plural

if TYPE_CHECKING:
    from nstd.config import LimitsConfig

log = logging.getLogger(__name__)

PacketProgress = Callable[[int], None]  # packets (frames) counted so far


#: Output extensions VideoWriter accepts (H.264 can live in these), and their muxers.
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_MP4_LIKE = ("mp4", "mov")
#: How many packets may pass without a decoded frame before a stream counts as undecodable.
_FIRST_FRAME_PACKET_LIMIT = 300


@dataclass(frozen=True, eq=False)
class InMemory:
    """A compressed video held in memory instead of a file (on a Ray actor: the source as it
    came from the object store). `probe_video` and `iter_frames` take it where they take a
    path, with the same container sniffing and limits; ``name`` stands for the path in
    messages. A memoryview is copied once into the reader (`io.BytesIO`); bytes are not."""

    name: str
    data: bytes | memoryview

    def __str__(self) -> str:
        return self.name

    def reader(self) -> io.BytesIO:
        return io.BytesIO(self.data)


Source = str | os.PathLike[str] | InMemory


def _as_source(path: Source) -> Path | InMemory:
    return path if isinstance(path, InMemory) else Path(path)


@dataclass(frozen=True)
class AudioInfo:
    """One audio stream of a source: `index` in the container, codec, layout, duration (s)."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    duration: float | None


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learnt about a source, before any full decode.

    width/height: as DISPLAYED: square pixels (anamorphic sources are stretched by their
    sample_aspect_ratio) and after rotation; coded_width/coded_height as stored.
    rotation: degrees counter-clockwise to turn stored frames upright (0, 90, 180 or 270).
    rate: average frame rate; time_base: of the video stream (frame pts are in it).
    frames: frame count, exact (`frames_exact`) when counted from packets, else estimated.
    duration: seconds of video. start_pts / end_pts: earliest pts and latest pts + duration
    of the video packets, in time_base units (None if unknown; end_pts only after a scan).
    container: the demuxer used ('mov', 'matroska' or 'avi').
    """

    path: Path | InMemory  # InMemory: decoded from bytes (a Ray actor)
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    rate: Fraction
    time_base: Fraction
    frames: int
    frames_exact: bool
    duration: float
    codec: str
    pix_fmt: str | None
    audio: tuple[AudioInfo, ...]
    file_bytes: int
    stream_index: int
    container: str
    start_pts: int | None = None
    end_pts: int | None = None
    sample_aspect_ratio: Fraction = Fraction(1)

    @property
    def square_width(self) -> int:
        """Stored width stretched to square pixels (frames are this wide before rotation)."""
        if self.sample_aspect_ratio == 1:
            return self.coded_width
        return max(2, round(self.coded_width * self.sample_aspect_ratio))

    @property
    def frame_count(self) -> int:
        """Alias of `frames`."""
        return self.frames

    @property
    def frame_interval(self) -> float:
        """Nominal seconds per frame (1 / rate)."""
        return float(1 / self.rate) if self.rate else 0.0


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


# --------------------------------------------------------------------------- opening


def _sniff_container(path: Path | InMemory) -> str | None:
    """The demuxer for `path` from its magic bytes, or None if not a supported container."""
    if isinstance(path, InMemory):
        head = bytes(path.data[:12])
    else:
        with open(path, "rb") as handle:
            head = handle.read(12)
    return container_format(head)


def _check_file(path: Path | InMemory, max_file_bytes: int | None = None) -> int:
    """Refuse what is not a regular, non-empty, small-enough file; returns its size."""
    if isinstance(path, InMemory):
        size = memoryview(path.data).nbytes
        if size == 0:
            raise InputError(f"{path} is empty (0 bytes)")
        if max_file_bytes is not None and size > max_file_bytes:
            raise InputError(
                f"{path} is {size} bytes, above limits.max_file_bytes = {max_file_bytes}"
            )
        return size
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except PermissionError:
        raise InputError(f"{path} cannot be read: permission denied") from None
    except OSError as exc:
        raise TransientError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or never end: never open one.
        raise InputError(f"{path} is not a regular file")
    if st.st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    if max_file_bytes is not None and st.st_size > max_file_bytes:
        raise InputError(
            f"{path} is {st.st_size} bytes, above limits.max_file_bytes = {max_file_bytes}"
        )
    return st.st_size


def _open_input(
    path: Path | InMemory, max_pixels: int | None = None
) -> tuple[av.container.InputContainer, str]:
    """Open with the demuxer sniffed from the magic bytes. `max_pixels` caps every frame the
    decoders may allocate, including the ones FFmpeg decodes while probing the streams."""
    try:
        demuxer = _sniff_container(path)
    except PermissionError:
        raise InputError(f"{path} cannot be read: permission denied") from None
    if demuxer is None:
        raise InputError(
            f"{path} is not a video in a supported container (MP4, MOV, MKV, WebM or AVI)"
        )
    options = {"max_pixels": str(max_pixels)} if max_pixels else None
    try:
        container = av.open(
            path.reader() if isinstance(path, InMemory) else str(path), mode="r",
            format=demuxer, options=options, metadata_errors="replace"
        )
    except av.FFmpegError as exc:
        raise InputError(
            f"{path} cannot be read as a video: it is truncated or corrupt and no frames are"
            f" decodable ({_why(exc)})"
        ) from None
    return container, demuxer


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().rstrip(".")


def _video_stream(container: av.container.InputContainer):
    for stream in container.streams.video:
        # Cover art in music files is a one-frame "video" stream: not a video.
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        return stream
    return None


_DURATION_TAG = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def _stream_duration(stream, container) -> float | None:
    """The duration the header promises for `stream`, in seconds (None if unknown)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        match = _DURATION_TAG.match(tag.strip())
        if match:
            h, m, s = match.groups()
            return int(h) * 3600 + int(m) * 60 + float(s)
    return None


def _normalize_rotation(degrees: float) -> int:
    quarter = round(degrees / 90.0)
    if abs(degrees - quarter * 90) > 1:
        log.warning(
            "rotation %.1f degrees is not a multiple of 90; using %d", degrees, quarter * 90
        )
    return int(quarter * 90) % 360


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


# --------------------------------------------------------------------------- probing


def probe_video(
    path: Source, limits: LimitsConfig, *, scan: bool = True,
    progress: PacketProgress | None = None,
) -> VideoInfo:
    """Inspect a source video and refuse what nstd cannot or must not process.

    limits: anything with max_file_bytes, max_pixels, max_video_seconds, max_video_frames.
    scan: count every video packet (no decoding) for an exact frame count and truncation
    check; False trusts the header (faster on huge files, estimates the frame count).
    progress: called with the packets counted so far, per packet (a long file's scan takes
    a while: the daemon's worker reports from it; the callback throttles itself).

    Raises InputError: missing/empty/not a regular file, unsupported container, no video
    stream (e.g. audio only), undecodable stream or zero frames, truncated or corrupt file,
    file size / pixels / duration / frame count above `limits`.
    """
    path = _as_source(path)
    file_bytes = _check_file(path, limits.max_file_bytes)
    container, demuxer = _open_input(path, _decoder_cap(limits.max_pixels))
    with container:
        stream = _video_stream(container)
        if stream is None:
            kinds = sorted({s.type for s in container.streams})
            what = ", ".join(kinds) if kinds else "no streams"
            raise InputError(f"{path} has no video stream (it contains: {what})")
        ctx = stream.codec_context
        coded_w, coded_h = int(ctx.width or 0), int(ctx.height or 0)
        if coded_w and coded_h:
            check_pixels(path, coded_w, coded_h, limits.max_pixels, per_frame=True)
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        header_duration = _stream_duration(stream, container)
        if header_duration is None and container.duration and len(container.streams) == 1:
            header_duration = container.duration / 1_000_000
        header_frames = int(stream.frames or 0)
        if header_duration is not None and header_duration > limits.max_video_seconds:
            raise InputError(
                f"{path} lasts {header_duration:.1f} s, above limits.max_video_seconds ="
                f" {limits.max_video_seconds:g}"
            )
        estimate = header_frames or (
            round(header_duration * rate) if header_duration and rate else 0
        )
        if estimate > limits.max_video_frames:
            raise InputError(
                f"{path} has about {estimate} frames, above limits.max_video_frames ="
                f" {limits.max_video_frames}"
            )
        audio = tuple(
            AudioInfo(
                index=a.index,
                codec=a.codec_context.name,
                sample_rate=int(a.codec_context.sample_rate or 0),
                channels=int(a.codec_context.channels or 0),
                duration=_stream_duration(a, container),
            )
            for a in container.streams.audio
        )

        _limit_decoder(stream, _decoder_cap(limits.max_pixels))
        scanner = _PacketScan(stream)
        first = _decode_first_frame(path, container, stream, scanner)
        rotation = _normalize_rotation(first.rotation or 0)
        coded_w, coded_h = first.width, first.height
        check_pixels(path, coded_w, coded_h, limits.max_pixels, per_frame=True)
        if rate is None or rate <= 0:
            rate = Fraction(30, 1)
            log.warning("%s declares no frame rate; assuming 30 fps", path.name)
        if scan:
            try:
                for packet in container.demux(stream):
                    scanner.add(packet)
                    if progress is not None:
                        progress(scanner.count)
                    if scanner.count > limits.max_video_frames:
                        raise InputError(
                            f"{path} has more than {limits.max_video_frames} frames, above"
                            " limits.max_video_frames"
                        )
            except av.FFmpegError as exc:
                raise InputError(
                    f"{path} is truncated or corrupt: reading stopped after"
                    f" {plural(scanner.count, 'frame')} ({scanner.seconds():.2f} s)"
                    f" ({_why(exc)})"
                ) from None
            _check_complete(path, demuxer, scanner, header_frames, header_duration, rate)
            frames, exact = scanner.count, True
            duration = scanner.seconds() or header_duration or 0.0
        else:
            frames, exact = estimate, False
            duration = header_duration or (frames / rate if rate else 0.0)
        if frames <= 0:
            raise InputError(f"{path} contains no video frames")
        if duration > limits.max_video_seconds:
            raise InputError(
                f"{path} lasts {duration:.1f} s, above limits.max_video_seconds ="
                f" {limits.max_video_seconds:g}"
            )
        sar = _sample_aspect_ratio(stream)
        square_w = coded_w if sar == 1 else max(2, round(coded_w * sar))
        check_pixels(path, square_w, coded_h, limits.max_pixels, per_frame=True)
        width, height = (coded_h, square_w) if rotation in (90, 270) else (square_w, coded_h)
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            rate=Fraction(rate),
            time_base=Fraction(time_base),
            frames=int(frames),
            frames_exact=exact,
            duration=float(duration),
            codec=ctx.name,
            pix_fmt=ctx.pix_fmt,
            audio=audio,
            file_bytes=file_bytes,
            stream_index=stream.index,
            container=demuxer,
            start_pts=scanner.start,
            end_pts=scanner.end if scan else None,
            sample_aspect_ratio=sar,
        )


def _sample_aspect_ratio(stream) -> Fraction:
    """The pixel aspect ratio; 1 when absent or implausible (a broken header, not a reason to
    stretch a frame 100 times)."""
    try:
        sar = stream.sample_aspect_ratio
    except (ZeroDivisionError, ValueError):
        return Fraction(1)
    if not sar or sar <= 0 or not Fraction(1, 4) <= sar <= 4:
        return Fraction(1)
    return Fraction(sar)


def _decoder_cap(pixels: int) -> int:
    """The decoders' own pixel cap for frames of `pixels`: generous, because decoders count
    their padding (MPEG-4 Part 2 pads a 64x48 frame many times over), yet far below a bomb."""
    return max(2 * pixels, 1 << 22)


def _limit_decoder(stream, max_pixels: int) -> None:
    """Make the decoder refuse (not allocate) frames above `max_pixels`."""
    stream.codec_context.options = {
        **stream.codec_context.options,
        "max_pixels": str(max_pixels),
    }


class _PacketScan:
    """Counts a stream's real packets and tracks the time span they cover."""

    def __init__(self, stream) -> None:
        self.time_base = stream.time_base or Fraction(1, 90000)
        self.count = 0
        self.first_pts: int | None = None
        self.start: int | None = None
        self.end: int | None = None

    def add(self, packet) -> None:
        # The demuxer ends with an empty flush packet; discard-flagged packets (before an
        # edit list's start) are never shown: neither counts as a frame.
        if packet.size == 0 or packet.is_discard:
            return
        self.count += 1
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            return
        if self.first_pts is None:
            self.first_pts = ts
        self.start = ts if self.start is None else min(self.start, ts)
        end = ts + max(int(packet.duration or 0), 0)
        self.end = end if self.end is None else max(self.end, end)

    def seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return float((self.end - self.start) * self.time_base)


def _decode_first_frame(path: Path, container, stream, scanner: _PacketScan):
    """Decode until the first frame (counting the packets on the way), or refuse."""
    try:
        for n, packet in enumerate(container.demux(stream)):
            scanner.add(packet)
            frames = packet.decode()
            if frames:
                return frames[0]
            if n >= _FIRST_FRAME_PACKET_LIMIT:
                break
    except av.FFmpegError as exc:
        raise InputError(f"{path} has an undecodable video stream ({_why(exc)})") from None
    raise InputError(f"{path} has no decodable video frames")


def _check_complete(
    path: Path,
    demuxer: str,
    scan: _PacketScan,
    header_frames: int,
    header_duration: float | None,
    rate: Fraction,
) -> None:
    """Refuse a file whose packets stop short of what its header promises (a cut copy)."""
    interval = float(1 / rate)
    present = scan.seconds()
    # MP4/MOV sample tables are exact; AVI headers also count dummy (dropped) frames.
    frames_short = demuxer in _MP4_LIKE and header_frames and scan.count < header_frames
    tolerance = max(2.0 * interval, 0.1)
    time_short = header_duration is not None and present < header_duration - tolerance
    if frames_short or time_short:
        expected_frames = header_frames or (round(header_duration * rate) if header_duration else 0)
        expected_s = f"{header_duration:.2f}" if header_duration is not None else "?"
        raise InputError(
            f"{path} is truncated or corrupt: only {scan.count} of {expected_frames} frames"
            f" ({present:.2f} of {expected_s} s) are present"
        )


# --------------------------------------------------------------------------- decoding


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
        yield from _iter_from(_as_source(path), info, start_index, start_pts, size)
        return
    yield from _iter_all(_as_source(path), info, size=size)


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
    max_pixels = _decoder_cap(info.coded_width * info.coded_height)
    container, _ = _open_input(path, max_pixels)
    index = 0
    last_end: int | None = None
    first_pts: int | None = None
    with container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        _limit_decoder(stream, max_pixels)
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
                f" {info.frames} frames ({seconds:.2f} of {info.duration:.2f} s) ({_why(exc)})"
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


def count_frames(path: str | os.PathLike[str]) -> int:
    """Number of video packets (= frames) in the first video stream, by demuxing only."""
    path = Path(path)
    _check_file(path)
    container, _ = _open_input(path)
    with container:
        stream = _video_stream(container)
        if stream is None:
            raise InputError(f"{path} has no video stream")
        scan = _PacketScan(stream)
        try:
            for packet in container.demux(stream):
                scan.add(packet)
        except av.FFmpegError as exc:
            raise InputError(f"{path} is truncated or corrupt ({_why(exc)})") from None
        return scan.count


def verify_video(path: str | os.PathLike[str], expected_frames: int,
                 progress: PacketProgress | None = None) -> bool:
    """Check a finished output before anything irreversible (moving the source) happens.

    Counts the video packets and compares with `expected_frames`. Returns True, or raises
    OutputError saying what is wrong.
    """
    path = Path(path)
    try:
        container, _ = _open_input(path)
    except InputError as exc:
        raise OutputError(f"output check failed: {exc}") from None
    with container:
        stream = _video_stream(container)
        if stream is None:
            raise OutputError(f"output check failed: {path} has no video stream")
        scan = _PacketScan(stream)
        try:
            for packet in container.demux(stream):
                scan.add(packet)
                if progress is not None:
                    progress(scan.count)
        except av.FFmpegError as exc:
            raise OutputError(f"output check failed: {path} is unreadable ({_why(exc)})") from None
    if scan.count != expected_frames:
        raise OutputError(
            f"output check failed: {path} has {plural(scan.count, 'frame')}, expected "
            f"{expected_frames}"
        )
    return True


# --------------------------------------------------------------------------- encoding


def even_size(width: int, height: int) -> tuple[int, int]:
    """Round a frame size down to even numbers (at least 2x2), as yuv420p requires."""
    return max(2, width - width % 2), max(2, height - height % 2)


def _audio_fits(fmt: str, source_path: Path | InMemory, stream_index: int) -> bool:
    """Can this source audio stream be stream-copied into a `fmt` container?

    Tried for real in memory (header, a few packets, trailer): some codecs pass the header
    and only fail when the trailer is written (PCM from Matroska into MP4).
    """
    try:
        with av.open(source_path.reader() if isinstance(source_path, InMemory)
                     else str(source_path), format=_sniff_container(source_path)) as source:
            template = source.streams[stream_index]
            with av.open(io.BytesIO(), mode="w", format=fmt) as probe:
                stream = probe.add_stream_from_template(template)
                copied = 0
                for packet in source.demux(template):
                    if packet.size == 0 or packet.dts is None:
                        continue
                    packet.stream = stream
                    probe.mux(packet)
                    copied += 1
                    if copied >= 4:
                        break
                probe.start_encoding()
    except (av.FFmpegError, ValueError) as exc:
        log.debug("audio stream %d cannot be copied into %s: %s", stream_index, fmt, exc)
        return False
    return True


# AAC encodes up to 7.1; an unordered layout ("2 channels") is mapped to the usual one.
_LAYOUTS_BY_CHANNELS = {
    1: "mono",
    2: "stereo",
    3: "2.1",
    4: "quad",
    5: "5.0",
    6: "5.1",
    7: "6.1",
    8: "7.1",
}


def _aac_layout(ctx) -> str:
    layout = ctx.layout
    name = layout.name if layout is not None else ""
    if name and "channels" not in name and layout.nb_channels <= 8:
        return name
    channels = layout.nb_channels if layout is not None else 2
    return _LAYOUTS_BY_CHANNELS.get(channels, "stereo")  # more than 8: downmixed to stereo


class _AudioTrack:
    """One source audio stream going into the output: copied, or re-encoded to AAC."""

    def __init__(self, output, source_stream, fmt: str, source_path: Path) -> None:
        self.source = source_stream
        self.copy = _audio_fits(fmt, source_path, source_stream.index)
        if self.copy:
            self.stream = output.add_stream_from_template(source_stream)
        else:
            ctx = source_stream.codec_context
            log.warning(
                "audio stream %d (%s) cannot be stored in %s as-is; re-encoding it to AAC",
                source_stream.index,
                ctx.name,
                fmt,
            )
            self.stream = output.add_stream("aac", rate=ctx.sample_rate or 48000)
            self.stream.layout = _aac_layout(ctx)
            self.stream.bit_rate = 192_000

    def put(self, output, packet) -> None:
        if self.copy:
            packet.stream = self.stream
            output.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None  # let the encoder's resampler/FIFO lay out a continuous timeline
            output.mux(self.stream.encode(frame))

    def finish(self, output) -> None:
        if not self.copy:
            for frame in self.source.decode(None):  # flush the decoder's delayed samples
                frame.pts = None
                output.mux(self.stream.encode(frame))
            output.mux(self.stream.encode(None))


class VideoWriter:
    """Encode upright RGB frames to H.264 yuv420p, with the source's timing and audio.

    `path`'s extension picks the container (.mp4/.m4v, .mov or .mkv). The file is written to a
    hidden temp name in the same folder and published atomically by `close()` (no-clobber
    unless `overwrite`); `abort()` — or leaving a `with` block by an exception — deletes it,
    so nothing partial ever appears at `path`.

    info: the source's VideoInfo (time base, rate and audio come from it).
    size: (w, h) of the output; default the source's displayed size. Rounded down to even.
    write(rgb, pts, duration) takes frames in the source time base; frames whose size is off
    by the odd-size rounding are cropped, other sizes are resized. Calls must come from one
    producer at a time (a lock makes it safe to hand the writer to another thread).
    Disk full -> TransientError; path exists -> OutputError (raised in the constructor).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        info: VideoInfo,
        size: tuple[int, int] | None = None,
        crf: int = 18,
        preset: str = "medium",
        *,
        overwrite: bool = False,
        audio: bool = True,
    ) -> None:
        self.path = Path(path)
        # A `fsutil.temp_path_for` name (".out.mp4.<pid>.<hex>.tmp") stands for its final name.
        named = fsutil.final_path_for_temp(self.path) or self.path
        fmt = _OUTPUT_FORMATS.get(named.suffix.lower())
        if fmt is None:
            allowed = ", ".join(sorted(_OUTPUT_FORMATS))
            raise UsageError(f"cannot write video to {self.path}: use one of {allowed}")
        if not overwrite and os.path.lexists(self.path):
            raise OutputError(
                f"{self.path} already exists; choose another output name or allow overwriting"
            )
        if not self.path.parent.is_dir():
            raise OutputError(
                f"cannot write {self.path}: the folder {self.path.parent} does not exist"
            )
        self.info = info
        self.overwrite = overwrite
        self.width, self.height = even_size(*(size or (info.width, info.height)))
        self.time_base = Fraction(info.time_base)
        self._step = max(1, round(1 / (info.rate * self.time_base))) if info.rate else 1
        self._lock = threading.Lock()
        self._last_pts: int | None = None
        self._last_interval: int | None = None
        # One frame is held back until the next arrives, so each frame's duration is known
        # (the last frame's duration sets the output's length): (frame, pts, duration|None).
        self._held: tuple[av.VideoFrame, int, int | None] | None = None
        self.frames_written = 0
        self._closed = False
        self._tmp = fsutil.temp_path_for(self.path)
        self._source = None
        self._audio: dict[int, _AudioTrack] = {}
        self._audio_packets: Iterator | None = None
        self._audio_next = None
        try:
            options = {}
            if fmt in _MP4_LIKE and self.time_base.numerator == 1:
                # Keep the source's time base as the track timescale: pts stay identical.
                options["video_track_timescale"] = str(self.time_base.denominator)
            self._out = av.open(str(self._tmp), mode="w", format=fmt, options=options)
            self._stream = self._add_video_stream(crf, preset)
            if audio and info.audio:
                self._open_audio(fmt)
        except OSError as exc:
            self._cleanup()
            raise fsutil.os_error_to_nstd(exc, self.path, "create") from exc
        except BaseException:
            self._cleanup()
            raise

    # -- setup

    def _add_video_stream(self, crf: int, preset: str):
        stream = self._out.add_stream("libx264", rate=self.info.rate)
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = self.time_base
        ctx = stream.codec_context
        ctx.time_base = self.time_base
        ctx.color_range = 1  # MPEG (limited)
        ctx.colorspace = 1  # BT.709
        ctx.color_primaries = 1
        ctx.color_trc = 1
        stream.options = {"crf": str(int(crf)), "preset": str(preset)}
        return stream

    def _open_audio(self, fmt: str) -> None:
        source, _ = _open_input(self.info.path)
        self._source = source
        streams = [s for s in source.streams.audio]
        for s in streams:
            self._audio[s.index] = _AudioTrack(self._out, s, fmt, self.info.path)
        self._audio_packets = iter(source.demux(streams))

    # -- writing

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Encode one upright frame. rgb: (H, W, 3) uint8 RGB. pts/duration: source time base.

        pts None continues at the nominal rate. Timestamps must increase; a repeated or
        backwards pts is nudged forward by one tick (logged) because encoders reject it.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("VideoWriter.write after close/abort")
            try:
                self._write(rgb, pts, duration)
            except OSError as exc:
                raise fsutil.os_error_to_nstd(exc, self.path) from exc

    def _fit(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(
                f"VideoWriter.write: expected (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}"
            )
        h, w = rgb.shape[:2]
        if (w, h) == (self.width, self.height):
            return rgb
        if w - self.width in (0, 1) and h - self.height in (0, 1):
            return rgb[: self.height, : self.width]  # odd size: drop the last row/column
        shrink = w * h > self.width * self.height
        return cv2.resize(
            rgb,
            (self.width, self.height),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC,
        )

    def _write(self, rgb: np.ndarray, pts: int | None, duration: int | None) -> None:
        rgb = np.ascontiguousarray(self._fit(rgb))
        if pts is None:
            pts = (
                (self.info.start_pts or 0)
                if self._last_pts is None
                else (self._last_pts + (self._last_interval or self._step))
            )
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            log.warning(
                "non-increasing pts %d after %d; using %d", pts, self._last_pts, self._last_pts + 1
            )
            pts = self._last_pts + 1
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        # BT.709 matrix, limited range, and the stream is tagged so (see the module notes).
        frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        if self._held is not None:
            held, held_pts, held_duration = self._held
            self._last_interval = pts - held_pts
            self._encode(held, held_pts, held_duration or self._last_interval)
        self._last_pts = pts
        self._held = (frame, pts, int(duration) if duration else None)

    def _encode(self, frame: av.VideoFrame, pts: int, duration: int) -> None:
        frame.pts = pts
        frame.time_base = self.time_base
        frame.duration = max(1, int(duration))
        self._out.mux(self._stream.encode(frame))
        self.frames_written += 1
        self._pump_audio(self.time_base * pts)

    def _last_duration(self, pts: int) -> int:
        """Duration of the final frame: where the source's video ends, else the last gap."""
        fallback = self._last_interval or self._step
        end = self.info.end_pts
        if end is not None and 0 < end - pts <= 4 * max(fallback, self._step):
            return end - pts
        return fallback

    def _pump_audio(self, until: Fraction | None) -> None:
        """Mux source audio packets up to `until` (seconds; None = all) to keep interleaving."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._audio_next
            if packet is None:
                try:
                    packet = next(self._audio_packets)
                except StopIteration:
                    self._audio_packets = None
                    return
                except av.FFmpegError as exc:
                    log.warning(
                        "source audio unreadable after some point (%s); the rest is dropped",
                        _why(exc),
                    )
                    self._audio_packets = None
                    return
                if packet.size == 0 or (packet.dts is None and packet.pts is None):
                    continue
            ts = packet.dts if packet.dts is not None else packet.pts
            if until is not None and ts * packet.time_base > until:
                self._audio_next = packet
                return
            self._audio_next = None
            self._audio[packet.stream.index].put(self._out, packet)

    # -- finishing

    def close(self) -> Path:
        """Flush the encoder, copy the rest of the audio, and publish the file at `path`."""
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            try:
                if self._held is not None:
                    held, held_pts, held_duration = self._held
                    self._held = None
                    self._encode(held, held_pts, held_duration or self._last_duration(held_pts))
                self._out.mux(self._stream.encode(None))
                self._pump_audio(None)
                for track in self._audio.values():
                    track.finish(self._out)
                self._out.close()
                self._close_source()
                fsutil.publish(self._tmp, self.path, overwrite=self.overwrite)
            except OSError as exc:
                self._cleanup()
                raise fsutil.os_error_to_nstd(exc, self.path) from exc
            except BaseException:
                self._cleanup()
                raise
        return self.path

    def abort(self) -> None:
        """Stop and delete the partial output; nothing appears at `path`. Idempotent."""
        with self._lock:
            self._closed = True
            self._cleanup()

    def _close_source(self) -> None:
        if self._source is not None:
            try:
                self._source.close()
            finally:
                self._source = None

    def _cleanup(self) -> None:
        out = getattr(self, "_out", None)
        if out is not None:
            try:
                out.close()
            except Exception as exc:  # closing a broken muxer may fail; the file goes anyway
                log.debug("closing the output failed: %s", exc)
            self._out = None
        try:
            self._close_source()
        except Exception as exc:
            log.debug("closing the audio source failed: %s", exc)
        fsutil.remove_quietly(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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

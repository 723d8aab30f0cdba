"""Inspecting a video before any full decode, and checking a finished output.

Decisions, each for a reason:

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
  frame's display-matrix side data.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av

from nstd.errors import InputError, OutputError
from nstd.media.images import check_pixels
from nstd.media.packets import PacketScan, scan_packets
from nstd.media.source import (
    MP4_LIKE,
    InMemory,
    PacketProgress,
    Source,
    as_source,
    check_file,
    decoder_cap,
    limit_decoder,
    open_input,
    video_stream,
    why,
)
from nstd.text import plural

if TYPE_CHECKING:
    from nstd.config import LimitsConfig

log = logging.getLogger(__name__)

#: How many packets may pass without a decoded frame before a stream counts as undecodable.
_FIRST_FRAME_PACKET_LIMIT = 300


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
class _Header:
    """What the container header promises, before a packet is read: the rate may be absent
    (None), the duration unknown (None), the frame count 0 (unknown)."""

    time_base: Fraction
    rate: Fraction | None
    duration: float | None
    frames: int
    estimate: int  # the frame count, or one from duration x rate (0: unknown)


# --------------------------------------------------------------------------- probe_video


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
    path = as_source(path)
    file_bytes = check_file(path, limits.max_file_bytes)
    container, demuxer = open_input(path, decoder_cap(limits.max_pixels))
    with container:
        stream = _the_video_stream(path, container)
        header = _read_header(path, container, stream, limits)
        audio = _audio_streams(container)
        limit_decoder(stream, decoder_cap(limits.max_pixels))
        packets = PacketScan(stream)
        first = _decode_first_frame(path, container, stream, packets)
        rotation = _normalize_rotation(first.rotation or 0)
        coded_w, coded_h = first.width, first.height
        check_pixels(path, coded_w, coded_h, limits.max_pixels, per_frame=True)
        rate = _frame_rate(path, header.rate)
        if scan:
            _scan_all(path, container, stream, packets, limits, progress)
            _check_complete(path, demuxer, packets, header.frames, header.duration, rate)
            frames, duration = packets.count, packets.seconds() or header.duration or 0.0
        else:
            frames = header.estimate
            duration = header.duration or (frames / rate if rate else 0.0)
        _check_length(path, frames, duration, limits)
        sar = _sample_aspect_ratio(stream)
        square_w = coded_w if sar == 1 else max(2, round(coded_w * sar))
        check_pixels(path, square_w, coded_h, limits.max_pixels, per_frame=True)
        width, height = (coded_h, square_w) if rotation in (90, 270) else (square_w, coded_h)
        ctx = stream.codec_context
        return VideoInfo(
            path=path, width=width, height=height, coded_width=coded_w, coded_height=coded_h,
            rotation=rotation, rate=Fraction(rate), time_base=Fraction(header.time_base),
            frames=int(frames), frames_exact=bool(scan), duration=float(duration), codec=ctx.name,
            pix_fmt=ctx.pix_fmt, audio=audio, file_bytes=file_bytes, stream_index=stream.index,
            container=demuxer, start_pts=packets.start,
            end_pts=packets.end if scan else None, sample_aspect_ratio=sar,
        )


def _the_video_stream(path: Path | InMemory, container):
    """The video stream to stylize, or refuse a file without one, naming what it holds."""
    stream = video_stream(container)
    if stream is None:
        kinds = sorted({s.type for s in container.streams})
        what = ", ".join(kinds) if kinds else "no streams"
        raise InputError(f"{path} has no video stream (it contains: {what})")
    return stream


def _read_header(path: Path | InMemory, container, stream, limits: LimitsConfig) -> _Header:
    """Read the header's promises and refuse a source whose header is already over a limit
    (before a packet is read: a bomb is refused by what it claims)."""
    ctx = stream.codec_context
    coded_w, coded_h = int(ctx.width or 0), int(ctx.height or 0)
    if coded_w and coded_h:
        check_pixels(path, coded_w, coded_h, limits.max_pixels, per_frame=True)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = _stream_duration(stream, container)
    if duration is None and container.duration and len(container.streams) == 1:
        duration = container.duration / 1_000_000
    frames = int(stream.frames or 0)
    if duration is not None and duration > limits.max_video_seconds:
        raise InputError(
            f"{path} lasts {duration:.1f} s, above limits.max_video_seconds ="
            f" {limits.max_video_seconds:g}"
        )
    estimate = frames or (round(duration * rate) if duration and rate else 0)
    if estimate > limits.max_video_frames:
        raise InputError(
            f"{path} has about {estimate} frames, above limits.max_video_frames ="
            f" {limits.max_video_frames}"
        )
    time_base = stream.time_base or Fraction(1, 90000)
    return _Header(time_base, rate, duration, frames, estimate)


def _audio_streams(container) -> tuple[AudioInfo, ...]:
    return tuple(
        AudioInfo(
            index=a.index,
            codec=a.codec_context.name,
            sample_rate=int(a.codec_context.sample_rate or 0),
            channels=int(a.codec_context.channels or 0),
            duration=_stream_duration(a, container),
        )
        for a in container.streams.audio
    )


def _frame_rate(path: Path | InMemory, rate: Fraction | None) -> Fraction:
    """The declared rate, or 30 fps (logged) for a stream that declares none."""
    if rate is None or rate <= 0:
        log.warning("%s declares no frame rate; assuming 30 fps", path.name)
        return Fraction(30, 1)
    return rate


def _scan_all(path: Path | InMemory, container, stream, packets: PacketScan,
              limits: LimitsConfig, progress: PacketProgress | None) -> None:
    """Count the remaining packets into `packets`, refusing a source over the frame limit
    as soon as it is (a huge file is not read to its end to be refused)."""

    def counted(count: int) -> None:
        if progress is not None:
            progress(count)
        if count > limits.max_video_frames:
            raise InputError(
                f"{path} has more than {limits.max_video_frames} frames, above"
                " limits.max_video_frames"
            )

    def broken(scan: PacketScan, reason: str) -> InputError:
        return InputError(
            f"{path} is truncated or corrupt: reading stopped after"
            f" {plural(scan.count, 'frame')} ({scan.seconds():.2f} s) ({reason})"
        )

    scan_packets(container, stream, broken, scan=packets, progress=counted)


def _check_length(path: Path | InMemory, frames: int, duration: float,
                  limits: LimitsConfig) -> None:
    """Refuse an empty video, or one longer than the limit once its length is known."""
    if frames <= 0:
        raise InputError(f"{path} contains no video frames")
    if duration > limits.max_video_seconds:
        raise InputError(
            f"{path} lasts {duration:.1f} s, above limits.max_video_seconds ="
            f" {limits.max_video_seconds:g}"
        )


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


def _decode_first_frame(path: Path | InMemory, container, stream, scanner: PacketScan):
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
        raise InputError(f"{path} has an undecodable video stream ({why(exc)})") from None
    raise InputError(f"{path} has no decodable video frames")


def _check_complete(
    path: Path | InMemory,
    demuxer: str,
    scan: PacketScan,
    header_frames: int,
    header_duration: float | None,
    rate: Fraction,
) -> None:
    """Refuse a file whose packets stop short of what its header promises (a cut copy)."""
    interval = float(1 / rate)
    present = scan.seconds()
    # MP4/MOV sample tables are exact; AVI headers also count dummy (dropped) frames.
    frames_short = demuxer in MP4_LIKE and header_frames and scan.count < header_frames
    tolerance = max(2.0 * interval, 0.1)
    time_short = header_duration is not None and present < header_duration - tolerance
    if frames_short or time_short:
        expected_frames = header_frames or (round(header_duration * rate) if header_duration else 0)
        expected_s = f"{header_duration:.2f}" if header_duration is not None else "?"
        raise InputError(
            f"{path} is truncated or corrupt: only {scan.count} of {expected_frames} frames"
            f" ({present:.2f} of {expected_s} s) are present"
        )


# --------------------------------------------------------------------------- counting


def count_frames(path: str | os.PathLike[str]) -> int:
    """Number of video packets (= frames) in the first video stream, by demuxing only."""
    path = Path(path)
    check_file(path)
    container, _ = open_input(path)
    with container:
        stream = video_stream(container)
        if stream is None:
            raise InputError(f"{path} has no video stream")

        def broken(_scan: PacketScan, reason: str) -> InputError:
            return InputError(f"{path} is truncated or corrupt ({reason})")

        return scan_packets(container, stream, broken).count


def verify_video(path: str | os.PathLike[str], expected_frames: int,
                 progress: PacketProgress | None = None) -> bool:
    """Check a finished output before anything irreversible (moving the source) happens.

    Counts the video packets and compares with `expected_frames`. Returns True, or raises
    OutputError saying what is wrong.
    """
    path = Path(path)
    try:
        container, _ = open_input(path)
    except InputError as exc:
        raise OutputError(f"output check failed: {exc}") from None
    with container:
        stream = video_stream(container)
        if stream is None:
            raise OutputError(f"output check failed: {path} has no video stream")

        def unreadable(_scan: PacketScan, reason: str) -> OutputError:
            return OutputError(f"output check failed: {path} is unreadable ({reason})")

        scan = scan_packets(container, stream, unreadable, progress=progress)
    if scan.count != expected_frames:
        raise OutputError(
            f"output check failed: {path} has {plural(scan.count, 'frame')}, expected "
            f"{expected_frames}"
        )
    return True

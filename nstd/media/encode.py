"""Encoding upright RGB frames to an H.264 video, with the source's timing and audio.

Decisions, each for a reason:

- **Rotation.** Frames arrive upright and are written with *no* rotation tag: the displayed
  orientation is the source's.
- **Timing.** The writer uses the source's time base (and MP4 track timescale where
  possible), so output timestamps equal input timestamps, variable frame rate included.
- **Audio.** Source audio packets are copied untouched into the output (remux). Only when the
  output container refuses a codec (e.g. PCM in MP4) is that stream re-encoded to AAC, with a
  warning in the log. Whether a codec fits is tested by writing a header into memory, not
  from a hard-coded list (FFmpeg's MP4 muxer accepts Opus, Vorbis and FLAC nowadays).
- **Even dimensions.** H.264 yuv420p needs even sizes; the writer rounds down to even and
  crops the last row/column of an odd-sized frame (lossless for the rest, no resampling).
- **Colour.** Encoding converts with the BT.709 matrix (limited range) and tags the output
  as BT.709 so players do not guess.
- **Atomic output.** The file is written under a hidden temporary name and published
  (no-clobber) only when complete.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from nstd.errors import OutputError, UsageError
from nstd.media import files as fsutil
from nstd.media.probe import VideoInfo
from nstd.media.source import MP4_LIKE, InMemory, open_input, sniff_container, why

log = logging.getLogger(__name__)

#: Output extensions VideoWriter accepts (H.264 can live in these), and their muxers.
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}



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
                     else str(source_path), format=sniff_container(source_path)) as source:
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
            if fmt in MP4_LIKE and self.time_base.numerator == 1:
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
        source, _ = open_input(self.info.path)
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
                        why(exc),
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

"""Opening a video source: a path or bytes in memory, checked and opened safely.

Decisions, each for a reason:

- **Container sniffing.** Only MP4/MOV, Matroska/WebM and AVI are opened, and the demuxer is
  chosen from the file's magic bytes, never by FFmpeg's auto-probe: a text file named
  `x.mp4` holding an HLS or concat playlist would otherwise make FFmpeg open other files.
- **Only regular files.** A FIFO or device would block or never end; an empty or oversized
  file is refused before FFmpeg sees it.
- **Pixel caps in the decoders.** Every decoder is told the largest frame it may allocate,
  so a decompression bomb fails instead of filling memory.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av

from nstd.errors import InputError, TransientError
from nstd.media.signature import container_format

PacketProgress = Callable[[int], None]  # packets (frames) counted so far

#: The demuxers whose sample tables are exact and whose muxers take a track timescale.
MP4_LIKE = ("mp4", "mov")


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


def as_source(path: Source) -> Path | InMemory:
    """A path-like as a `Path`; bytes in memory as they are."""
    return path if isinstance(path, InMemory) else Path(path)


def sniff_container(path: Path | InMemory) -> str | None:
    """The demuxer for `path` from its magic bytes, or None if not a supported container."""
    if isinstance(path, InMemory):
        head = bytes(path.data[:12])
    else:
        with open(path, "rb") as handle:
            head = handle.read(12)
    return container_format(head)


def check_file(path: Path | InMemory, max_file_bytes: int | None = None) -> int:
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


def open_input(
    path: Path | InMemory, max_pixels: int | None = None
) -> tuple[av.container.InputContainer, str]:
    """Open with the demuxer sniffed from the magic bytes. `max_pixels` caps every frame the
    decoders may allocate, including the ones FFmpeg decodes while probing the streams."""
    try:
        demuxer = sniff_container(path)
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
            f" decodable ({why(exc)})"
        ) from None
    return container, demuxer


def why(exc: BaseException) -> str:
    """FFmpeg's reason for a failure, as the tail of one of our sentences."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().rstrip(".")


def video_stream(container: av.container.InputContainer):
    """The first real video stream, or None (cover art in music files does not count)."""
    for stream in container.streams.video:
        # Cover art in music files is a one-frame "video" stream: not a video.
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        return stream
    return None


def decoder_cap(pixels: int) -> int:
    """The decoders' own pixel cap for frames of `pixels`: generous, because decoders count
    their padding (MPEG-4 Part 2 pads a 64x48 frame many times over), yet far below a bomb."""
    return max(2 * pixels, 1 << 22)


def limit_decoder(stream, max_pixels: int) -> None:
    """Make the decoder refuse (not allocate) frames above `max_pixels`."""
    stream.codec_context.options = {
        **stream.codec_context.options,
        "max_pixels": str(max_pixels),
    }

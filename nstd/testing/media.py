"""Synthetic images and clips for tests and benchmarks (written with PIL / OpenCV / PyAV).

The moving texture is a smooth, periodic random texture (white noise low-passed in the
Fourier domain, so it wraps seamlessly) translated by (dx, dy) = (2, 1) pixels per frame:
optical flow on it is a known, meaningful pure translation with no seams entering the frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

#: Per-frame translation of the moving texture, (dx, dy) in pixels.
TEXTURE_SHIFT = (2, 1)

_CONTAINERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}
_ENCODERS = {"h264": "libx264", "ffv1": "ffv1", "mpeg4": "mpeg4", "vp9": "libvpx-vp9"}


def smooth_texture(
    height: int, width: int, *, seed: int = 0, sigma: float | None = None
) -> np.ndarray:
    """A periodic smooth random colour texture: (height, width, 3) float32 in [0, 1].

    Periodic (it tiles seamlessly), so rolling it is an exact translation. `sigma` is the
    correlation length in pixels (default: about 1/16 of the shorter side, at least 2).
    """
    rng = np.random.default_rng(seed)
    if sigma is None:
        sigma = max(2.0, min(height, width) / 16.0)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    # Gaussian blur of width `sigma` px == multiplication by this Gaussian in frequency.
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    channels = []
    for _ in range(3):
        noise = rng.standard_normal((height, width))
        smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * gain))
        smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-12)
        channels.append(smooth)
    return np.stack(channels, axis=2).astype(np.float32)


def _texture_frame(texture: np.ndarray, index: int, height: int, width: int) -> np.ndarray:
    dx, dy = TEXTURE_SHIFT
    # Content moves right/down by (dx, dy) per frame: out(x) = texture(x - shift).
    rolled = np.roll(texture, shift=(dy * index, dx * index), axis=(0, 1))
    return rolled[:height, :width]


def make_test_frames(
    *,
    frames: int,
    size: tuple[int, int],
    pattern: str = "moving_texture",
    cut_at: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """The frames `write_test_clip` encodes, as displayed: list of (h, w, 3) uint8 RGB.

    size: (w, h) of the displayed frames. pattern: 'moving_texture' (translates by
    TEXTURE_SHIFT per frame), 'static' (one frame repeated) or 'shuffled' (the moving
    frames in a seeded random order). cut_at: from this index on, a different texture with
    inverted colours (a hard scene cut).
    """
    if pattern not in ("moving_texture", "static", "shuffled"):
        raise ValueError(f"unknown pattern {pattern!r}")
    width, height = size
    # A margin keeps the texture's period longer than the frame, so content really enters.
    first = smooth_texture(height + 16, width + 16, seed=seed)
    second = 1.0 - smooth_texture(height + 16, width + 16, seed=seed + 1000, sigma=None)
    order = list(range(frames))
    if pattern == "shuffled":
        order = list(np.random.default_rng(seed).permutation(frames))
    out = []
    for i in range(frames):
        texture = second if cut_at is not None and i >= cut_at else first
        step = 0 if pattern == "static" else int(order[i])
        rgb = _texture_frame(texture, step, height, width)
        out.append((rgb * 215.0 + 20.5).astype(np.uint8))  # stay inside video range
    return out


def vfr_pts(frames: int, rate: Fraction, seed: int = 0) -> tuple[list[int], Fraction]:
    """Irregular timestamps: (pts list, time_base); durations 0.5x..2x the nominal interval."""
    time_base = Fraction(1, 2 * rate.numerator)
    nominal = 2 * rate.denominator  # ticks per nominal frame interval
    rng = np.random.default_rng(seed + 7)
    factors = rng.choice([0.5, 1.0, 1.5, 2.0], size=frames)
    pts, t = [], 0
    for f in factors:
        pts.append(t)
        t += int(nominal * f)
    return pts, time_base


def write_test_clip(
    path: str | os.PathLike[str],
    *,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    rate: Fraction = Fraction(30000, 1001),
    audio: bool = False,
    rotation: int = 0,
    cut_at: int | None = None,
    vfr: bool = False,
    pattern: str = "moving_texture",
    codec: str | None = None,
    audio_codec: str | None = None,
    seed: int = 0,
    faststart: bool = False,
    sample_aspect_ratio: Fraction | None = None,
) -> Path:
    """Write a small synthetic video; returns its path. The container follows the extension.

    size: (w, h) *as stored* (coded). With rotation = ±90 the display size is (h, w): the
    content is generated upright at display size and stored rotated, with a display matrix
    saying how to turn it back (`rotation` degrees counter-clockwise, PyAV's convention).
    codec: 'h264' (default; yuv444p when a dimension is odd, yuv420p otherwise), 'ffv1',
    'mpeg4' (default for .avi) or 'vp9' (default for .webm).
    audio: add a 440 Hz sine track lasting exactly as long as the video (AAC; Opus in WebM;
    or `audio_codec`). vfr: irregular frame durations (see `vfr_pts`). faststart: MP4 with the
    index at the front (a truncated copy of it is still openable). sample_aspect_ratio:
    store non-square pixels (an anamorphic source; the content is then not square-corrected).
    """
    path = Path(path)
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"write_test_clip: unknown container for {path.name}")
    codec = codec or {"webm": "vp9", "avi": "mpeg4"}.get(fmt, "h264")
    rotation = int(rotation) % 360
    if rotation % 90:
        raise ValueError("write_test_clip: rotation must be a multiple of 90")
    display = (size[1], size[0]) if rotation in (90, 270) else (size[0], size[1])
    upright = make_test_frames(frames=frames, size=display, pattern=pattern, cut_at=cut_at,
                               seed=seed)
    pts, time_base = _clip_timing(fmt, frames, rate, vfr, seed)
    options = {"movflags": "+faststart"} if faststart and fmt in ("mp4", "mov") else {}
    with av.open(str(path), "w", format=fmt, options=options) as container:
        stream = _add_clip_stream(container, codec, size, rate, time_base, rotation,
                                  sample_aspect_ratio)
        durations = _frame_durations(pts, rate, time_base)
        acodec = audio_codec or ("libopus" if fmt == "webm" else "aac")
        end_time = (pts[-1] + durations[-1]) * time_base
        audio_writer = _SineWriter(container, acodec, end_time) if audio else None
        for image, frame_pts, duration in zip(upright, pts, durations, strict=True):
            coded = np.ascontiguousarray(np.rot90(image, k=-(rotation // 90)))  # undo the rotation
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts, frame.time_base, frame.duration = frame_pts, time_base, duration
            container.mux(stream.encode(frame))
            if audio_writer is not None:
                audio_writer.write_until(Fraction(frame_pts, 1) * time_base)
        container.mux(stream.encode())
        if audio_writer is not None:
            audio_writer.finish()
    return path


def _clip_timing(fmt: str, frames: int, rate: Fraction, vfr: bool,
                 seed: int) -> tuple[list[int], Fraction]:
    """The frames' pts and the stream's time base."""
    if fmt == "avi":
        # AVI is constant-rate by construction: one tick per frame, no VFR.
        if vfr:
            raise ValueError("write_test_clip: AVI cannot hold a variable frame rate")
        return list(range(frames)), 1 / rate
    if vfr:
        return vfr_pts(frames, rate, seed)
    return [i * rate.denominator for i in range(frames)], Fraction(1, rate.numerator)


def _frame_durations(pts: list[int], rate: Fraction, time_base: Fraction) -> list[int]:
    """Each frame lasts until the next; the last as long as the one before it (what players
    assume too), or one nominal interval in a one-frame clip."""
    gaps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    return gaps + [gaps[-1] if gaps else round(1 / (rate * time_base))]


def _add_clip_stream(container, codec: str, size: tuple[int, int], rate: Fraction,
                     time_base: Fraction, rotation: int, sample_aspect_ratio: Fraction | None):
    """The video stream, with the pixel format, quality and tags `write_test_clip` promises."""
    stream = container.add_stream(_ENCODERS[codec], rate=rate)
    width, height = size
    stream.width, stream.height = width, height
    odd = width % 2 or height % 2
    stream.pix_fmt = {
        "h264": "yuv444p" if odd else "yuv420p",
        "ffv1": "yuv444p",
        "mpeg4": "yuv420p",
        "vp9": "yuv420p",
    }[codec]
    stream.codec_context.time_base = time_base
    if codec == "h264":
        stream.options = {"crf": "10", "preset": "veryfast"}
    elif codec == "mpeg4":
        stream.options = {"qscale": "2"}
        stream.codec_context.qscale = 2
    if rotation:
        stream.set_display_rotation(rotation)
    if sample_aspect_ratio is not None:
        stream.codec_context.sample_aspect_ratio = Fraction(sample_aspect_ratio)
    return stream


class _SineWriter:
    """Encodes a 440 Hz stereo sine into `container`, chunk by chunk, up to `end_time`."""

    def __init__(self, container, codec: str, end_time: Fraction, rate: int = 48000) -> None:
        self.container = container
        self.rate = rate
        self.stream = container.add_stream(codec, rate=rate)
        self.stream.layout = "stereo"
        if codec in ("vorbis", "opus"):
            self.stream.codec_context.options = {"strict": "experimental"}
        self.total = int(round(end_time * rate))
        self.done = 0
        self.chunk = 1024

    def write_until(self, time: Fraction) -> None:
        target = min(self.total, int(time * self.rate))
        while self.done + self.chunk <= target:
            self._write(self.chunk)

    def _write(self, n: int) -> None:
        t = (np.arange(self.done, self.done + n) / self.rate).astype(np.float64)
        mono = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([mono, mono]), format="fltp", layout="stereo")
        frame.sample_rate = self.rate
        frame.pts = self.done
        frame.time_base = Fraction(1, self.rate)
        self.container.mux(self.stream.encode(frame))
        self.done += n

    def finish(self) -> None:
        while self.done < self.total:
            self._write(min(self.chunk, self.total - self.done))
        self.container.mux(self.stream.encode())


def write_test_audio(
    path: str | os.PathLike[str], *, seconds: float = 0.5, codec: str | None = None
) -> Path:
    """An audio-only file (a sine; AAC, or Opus for .webm): a 'video' with no video stream."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = _CONTAINERS.get(suffix) or {".m4a": "mp4", ".wav": "wav", ".ogg": "ogg"}.get(suffix)
    if fmt is None:
        raise ValueError(f"write_test_audio: unknown container for {path.name}")
    with av.open(str(path), "w", format=fmt) as container:
        writer = _SineWriter(
            container, codec or ("libopus" if fmt == "webm" else "aac"), Fraction(seconds)
        )
        writer.finish()
    return path


def write_test_image(
    path: str | os.PathLike[str],
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    seed: int = 0,
    exif_orientation: int | None = None,
) -> Path:
    """Write a smooth random test image; returns its path. The format follows the extension.

    size: (w, h) of the stored pixels (before any EXIF orientation is applied).
    mode: 'RGB', 'RGBA' (alpha ramps left to right), 'L', 'LA', 'P', 'CMYK', 'I;16'
    (16-bit greyscale), 'RGB;16' (16-bit colour, PNG/TIFF, written with OpenCV) or 'F'
    (32-bit float greyscale, TIFF; nstd refuses it).
    exif_orientation: 1..8 stored in the EXIF Orientation tag (JPEG, PNG, WebP, TIFF).
    """
    path = Path(path)
    width, height = size
    texture = smooth_texture(height, width, seed=seed)
    if mode == "RGB;16":
        if exif_orientation is not None:
            raise ValueError("write_test_image: no EXIF for 16-bit colour images")
        array16 = (texture[:, :, ::-1] * 65535.0 + 0.5).astype(np.uint16)
        if not cv2.imwrite(str(path), array16):
            raise ValueError(f"write_test_image: OpenCV cannot write {path.name}")
        return path
    rgb8 = (texture * 255.0 + 0.5).astype(np.uint8)
    if mode == "RGB":
        image = Image.fromarray(rgb8, mode="RGB")
    elif mode == "RGBA":
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
        image = Image.fromarray(np.dstack([rgb8, ramp.astype(np.uint8)]), mode="RGBA")
    elif mode in ("L", "LA", "P", "CMYK"):
        image = Image.fromarray(rgb8, mode="RGB").convert(mode)
    elif mode == "I;16":
        grey = (texture.mean(axis=2) * 65535.0 + 0.5).astype(np.uint16)
        image = Image.fromarray(grey)
    elif mode == "F":
        image = Image.fromarray(texture.mean(axis=2).astype(np.float32), mode="F")
    else:
        raise ValueError(f"write_test_image: unsupported mode {mode!r}")
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = int(exif_orientation)
        kwargs["exif"] = exif
    if path.suffix.lower() in (".jpg", ".jpeg"):
        kwargs["quality"] = 95
    image.save(path, **kwargs)
    return path


def crafted_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` with no pixel data (a "bomb").

    Built by hand so no large allocation happens: signature, IHDR, an empty IDAT, IEND.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def truncate_file(path: str | os.PathLike[str], fraction: float = 0.5) -> Path:
    """Cut a file to `fraction` of its bytes in place (an interrupted copy); returns it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * fraction))
    return path


def frames_close(a: np.ndarray, b: np.ndarray, tolerance: float = 12.0) -> bool:
    """True if two uint8 frames match within a mean absolute difference (lossy codecs)."""
    if a.shape != b.shape:
        return False
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()) <= tolerance


__all__: Sequence[str] = (
    "TEXTURE_SHIFT",
    "crafted_png_header",
    "frames_close",
    "make_test_frames",
    "smooth_texture",
    "truncate_file",
    "vfr_pts",
    "write_test_audio",
    "write_test_clip",
    "write_test_image",
)

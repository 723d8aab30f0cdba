"""Still images in and out: the only place that decodes/encodes image files.

Reading (`read_image`) treats every file as hostile:

- the dimensions are read from the header (PIL's `Image.open` is lazy) and refused above
  `max_pixels` *before* any pixel is decoded, so a 40000x40000 "decompression bomb" costs
  nothing; PIL's own `DecompressionBombError` is mapped to the same `InputError`;
- only the formats nstd accepts are probed (PNG, JPEG, WebP, BMP, TIFF), which keeps the
  decoder attack surface small and makes a GIF renamed `.png` an error, not a surprise;
- the whole image is decoded at once (`load()`), so a truncated file fails here, with one
  sentence naming the file, not later inside the engine.

Huge inputs, small outputs (`max_side`): the decode costs memory for what the output needs,
not for the file's size, where the library allows it:

- JPEG is decoded reduced by libjpeg's DCT scaling (PIL `draft`: 1/2, 1/4 or 1/8 of each
  side, the largest reduction that still gives at least `max_side`), so a 48-megapixel photo
  is never held at full size;
- every other 8-bit image (PNG, WebP, BMP, 8-bit TIFF) is decoded at full size as 8-bit
  samples (PIL cannot decode those formats reduced) and shrunk there, before the float32
  conversion that would quadruple it;
- 16-bit images are converted at full size, as before (rare at huge sizes).

Colour handling:

- EXIF orientation is applied, so the engine always sees the image upright;
- greyscale (1, L, I;16, I) is replicated to RGB; palette images are expanded; CMYK and YCbCr
  are converted to RGB;
- 16-bit input (greyscale PNG/TIFF via PIL, 16-bit RGB(A) PNG/TIFF via OpenCV because PIL
  reduces those to 8 bits) is scaled to [0, 1] at full precision and reported as `bits=16`;
- modes whose value range is ambiguous (32-bit float `F`, signed 32-bit `I` beyond 16 bits,
  LAB, HSV...) are refused with an `InputError` rather than guessed.

Alpha: the engine stylizes RGB only. `read_image` returns the alpha channel separately
(`LoadedImage.alpha`); the caller stylizes `rgb` and hands the *original* alpha back to
`write_image`, which reattaches it when the output format can carry it (PNG, WebP, TIFF) and
drops it otherwise (JPEG, BMP). Colour under fully transparent pixels is stylized as-is.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from nstd.errors import InputError, TransientError, UsageError
from nstd.media import files as fsutil
from nstd.media.kinds import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

#: Output extensions whose format can store an alpha channel.
ALPHA_EXTENSIONS: frozenset[str] = frozenset({".png", ".webp", ".tif", ".tiff"})
#: Output extensions that can store 16 bits per channel.
SIXTEEN_BIT_EXTENSIONS: frozenset[str] = frozenset({".png", ".tif", ".tiff"})

# PIL decoders we allow to look at a file (JPEG also covers MPO, the variant cameras write).
_READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF")
_WRITE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_EXIF_ORIENTATION = 0x0112
_JPEG_QUALITY = 95
_WEBP_QUALITY = 95


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image, upright.

    rgb: (H, W, 3) float32 in [0, 1].
    alpha: (H, W) float32 in [0, 1], or None when the file has no alpha channel.
    bits: 8 or 16, the precision of the source samples.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bits: int

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _name(path: Path) -> str:
    return str(path)


def _open(path: Path) -> Image.Image:
    """Open lazily (header only) with errors mapped to one-sentence nstd errors."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{_name(path)} does not exist") from None
    except OSError as exc:
        raise TransientError(f"cannot read {_name(path)}: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise InputError(f"{_name(path)} is not a regular file")
    if size == 0:
        raise InputError(f"{_name(path)} is empty (0 bytes)")
    # Register every plugin first: with `formats=`, PIL looks each name up directly and
    # fails on one (MPO, WEBP, TIFF) that its lazy pre-init has not loaded yet.
    Image.init()
    try:
        return Image.open(path, formats=_READ_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{_name(path)} declares too many pixels to be decoded safely ({exc})"
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{_name(path)} is not an image nstd can read (PNG, JPEG, WebP, BMP or TIFF)"
        ) from None
    except PermissionError:
        raise InputError(f"{_name(path)} cannot be read: permission denied") from None
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error (EIO, ...): may go away
            raise TransientError(f"cannot read {_name(path)}: {exc.strerror or exc}") from exc
        raise InputError(f"{_name(path)} is not a readable image ({exc})") from None
    except Exception as exc:  # decoders raise SyntaxError, ValueError, struct.error...
        raise InputError(f"{_name(path)} is not a readable image ({exc})") from None


def check_pixels(path: Path, width: int, height: int, max_pixels: int, *,
                 per_frame: bool = False) -> None:
    """InputError for an empty size or one above ``limits.max_pixels`` (images and videos, whose
    frames are checked with ``per_frame``), before anything is decoded."""
    what = "frame" if per_frame else "image"
    if width <= 0 or height <= 0:
        raise InputError(f"{_name(path)} declares an empty {what} ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{_name(path)} is {width}x{height} = {width * height} pixels"
            f"{' per frame' if per_frame else ''}, above limits.max_pixels = {max_pixels};"
            " downscale it or raise the limit"
        )


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception as exc:  # malformed EXIF must not make a valid image unreadable
        log.warning("ignoring unreadable EXIF data: %s", exc)
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an (H, W, ...) array stored with EXIF `orientation` (1..8) upright.

    Same result as `PIL.ImageOps.exif_transpose`; works for any dtype and channel count.
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _is_16bit_colour(im: Image.Image) -> bool:
    """True for 16-bit-per-channel RGB(A) PNG/TIFF, which PIL silently reduces to 8 bits."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode


def _decode_16bit_colour(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit RGB(A) via OpenCV (dimensions were already checked from the header)."""
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        raise InputError(f"{_name(path)} is truncated or corrupt (16-bit colour data unreadable)")
    scaled = array.astype(np.float32) / 65535.0
    rgb = cv2.cvtColor(scaled[:, :, :3], cv2.COLOR_BGR2RGB)
    alpha = scaled[:, :, 3] if array.shape[2] == 4 else None
    return rgb, alpha


def _decode_pil(path: Path, im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Decoded PIL image -> (rgb (H,W,3) float32 [0,1], alpha (H,W) float32 | None, bits)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        grey = np.asarray(im).astype(np.float32) / 65535.0
        return np.repeat(grey[:, :, None], 3, axis=2), None, 16
    if mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(
                f"{_name(path)} uses 32-bit integer samples, which nstd does not support;"
                " save it as 8- or 16-bit"
            )
        grey = values.astype(np.float32) / 65535.0
        return np.repeat(grey[:, :, None], 3, axis=2), None, 16
    if mode in ("1", "L"):
        grey = np.asarray(im.convert("L")).astype(np.float32) / 255.0
        return np.repeat(grey[:, :, None], 3, axis=2), None, 8
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA")).astype(np.float32) / 255.0
        return np.repeat(la[:, :, :1], 3, axis=2), la[:, :, 1].copy(), 8
    if mode == "P":
        has_alpha = "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode in ("RGBX", "CMYK", "YCbCr"):
        im = im.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        return np.asarray(im).astype(np.float32) / 255.0, None, 8
    if mode == "RGBA":
        rgba = np.asarray(im).astype(np.float32) / 255.0
        return rgba[:, :, :3].copy(), rgba[:, :, 3].copy(), 8
    raise InputError(
        f"{_name(path)} uses the colour mode {mode!r}, which nstd does not support;"
        " convert it to RGB, RGBA or greyscale"
    )


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of the image upright (EXIF orientation applied), from its header only.
    Raises InputError like `read_image`."""
    path = Path(path)
    with _open(path) as im:
        width, height = im.size
        turned = _orientation(im) in (5, 6, 7, 8)
    return (width, height) if turned else (height, width)


def read_image(path: str | os.PathLike[str], max_pixels: int, *,
               max_side: int | None = None) -> LoadedImage:
    """Decode an image file upright, refusing bombs before decoding.

    Returns LoadedImage(rgb (H,W,3) float32 [0,1], alpha (H,W) float32 [0,1] | None, bits).
    With `max_side`, an image whose longest side is longer comes back shrunk to it (area
    averaging, aspect kept), decoded reduced where the format allows (module docstring).
    Raises InputError (one sentence naming the file) for: missing, empty, not an image, a
    format other than PNG/JPEG/WebP/BMP/TIFF, more than `max_pixels` pixels, truncated or
    corrupt data, an unsupported colour mode. TransientError for an I/O error that may pass.
    """
    path = Path(path)
    with _open(path) as im:
        width, height = im.size
        check_pixels(path, width, height, max_pixels)
        sixteen_bit_colour = _is_16bit_colour(im)
        shrink = max_side is not None and max(width, height) > max_side
        if shrink and im.format == "JPEG":
            assert max_side is not None
            scale = max_side / max(width, height)
            # DCT scaling: decoded at 1/2, 1/4 or 1/8 of each side, never below this size.
            im.draft(im.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        try:
            im.load()  # full decode now: truncation and corruption surface here
        except Image.DecompressionBombError as exc:
            raise InputError(f"{_name(path)} is too large to decode safely ({exc})") from None
        except MemoryError:
            raise
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EAGAIN, errno.ESTALE):
                raise TransientError(f"cannot read {_name(path)}: {exc.strerror or exc}") from exc
            raise InputError(f"{_name(path)} is truncated or corrupt ({exc})") from None
        except Exception as exc:
            raise InputError(f"{_name(path)} is truncated or corrupt ({exc})") from None
        orientation = _orientation(im)
        if sixteen_bit_colour:
            rgb, alpha = _decode_16bit_colour(path)
            bits = 16
        else:
            if shrink and max_side is not None:
                im = _shrink_8bit(im, max_side)
            rgb, alpha, bits = _decode_pil(path, im)
    rgb = np.ascontiguousarray(apply_orientation(rgb, orientation), dtype=np.float32)
    if alpha is not None:
        alpha = np.ascontiguousarray(apply_orientation(alpha, orientation), dtype=np.float32)
    if max_side is not None and max(rgb.shape[:2]) > max_side:  # 16-bit, or not shrunk yet
        rgb = resize_max_side(rgb, max_side)
        if alpha is not None:
            alpha = resize_max_side(alpha[..., None], max_side)[..., 0]
    return LoadedImage(rgb=rgb, alpha=alpha, bits=bits)


# 8-bit modes that PIL resizes as they are (after the conversions below).
_SHRINKABLE = {"1": "L", "P": None, "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB",
               "CMYK": "RGB", "YCbCr": "RGB", "L": "L", "LA": "LA", "RGB": "RGB",
               "RGBA": "RGBA"}


def _shrink_8bit(im: Image.Image, max_side: int) -> Image.Image:
    """An 8-bit PIL image shrunk so its longest side is `max_side` (box filter = area
    averaging, as `resize_max_side`); other modes come back unchanged."""
    if im.mode not in _SHRINKABLE:
        return im
    target = _SHRINKABLE[im.mode]
    if target is None:  # palette: expand first (averaging palette indices means nothing)
        target = "RGBA" if "transparency" in im.info else "RGB"
    if target != im.mode:
        im = im.convert(target)
    width, height = im.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return im
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if im.mode in ("RGBA", "LA"):
        # Band by band: PIL would premultiply by alpha and lose the colour under transparent
        # pixels, which nstd keeps (module docstring).
        return Image.merge(im.mode, [band.resize(size, Image.Resampling.BOX)
                                     for band in im.split()])
    return im.resize(size, Image.Resampling.BOX)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float in [0, 1] (values outside are clipped) -> uint8 [0, 255], any shape; uint8 passes."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1], any shape; floats pass through as float32."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=False)


def _encode(
    ext: str, rgb: np.ndarray, alpha: np.ndarray | None, bits: int, quality: int | None
) -> bytes:
    if bits == 16 and ext in SIXTEEN_BIT_EXTENSIONS:
        channels = [rgb[:, :, 2], rgb[:, :, 1], rgb[:, :, 0]]  # OpenCV wants BGR(A)
        if alpha is not None:
            channels.append(alpha)
        stacked = np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=2)
        array16 = (np.clip(stacked, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        ok, buffer = cv2.imencode(ext, array16)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a 16-bit {ext} image")
        return buffer.tobytes()
    rgb8 = to_uint8(np.asarray(rgb))
    if alpha is not None:
        pil = Image.fromarray(np.dstack([rgb8, to_uint8(np.asarray(alpha))]), mode="RGBA")
    else:
        pil = Image.fromarray(rgb8, mode="RGB")
    fmt = _WRITE_FORMATS[ext]
    options: dict[str, object] = {}
    if fmt == "JPEG":
        # 4:4:4 chroma: stylized images are full of fine colour texture that 4:2:0 smears.
        options = {"quality": quality or _JPEG_QUALITY, "subsampling": 0}
    elif fmt == "WEBP":
        options = {"quality": quality or _WEBP_QUALITY}
    out = io.BytesIO()
    pil.save(out, format=fmt, **options)
    return out.getvalue()


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    overwrite: bool = False,
    bits: int = 8,
    quality: int | None = None,
) -> Path:
    """Write an image atomically (temp file in the same folder, then no-clobber publish).

    rgb: (H, W, 3) float in [0, 1] (clipped) or uint8. alpha: (H, W) float [0, 1] or uint8, or
    None; reattached for PNG/WebP/TIFF, dropped (logged) for JPEG/BMP. The format follows the
    extension (case-insensitive). bits=16 writes 16-bit PNG/TIFF (8 bits for other formats).
    quality: JPEG/WebP quality (default 95). Returns the path written.

    Raises UsageError for an unknown extension, OutputError if `path` exists (unless
    `overwrite`) or cannot be written, TransientError when the disk is full. A failed write
    leaves nothing at `path`.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _WRITE_FORMATS:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UsageError(
            f"cannot tell the image format of {path}: use one of the extensions {allowed}"
        )
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_image: rgb must be (H, W, 3), got {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"write_image: alpha {alpha.shape} does not match rgb {rgb.shape}")
        if ext not in ALPHA_EXTENSIONS:
            log.info("%s cannot store transparency; the alpha channel is dropped", path.name)
            alpha = None
    if bits not in (8, 16):
        raise ValueError(f"write_image: bits must be 8 or 16, got {bits}")
    if rgb.dtype == np.uint8:
        rgb = to_float(rgb)
    if alpha is not None and alpha.dtype == np.uint8:
        alpha = to_float(alpha)
    data = _encode(ext, rgb, alpha, bits, quality)
    with fsutil.atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
    return path


def resize_max_side(image: np.ndarray, max_side: int, *, allow_upscale: bool = False) -> np.ndarray:
    """Resize so the longest side is `max_side`, keeping the aspect ratio.

    image: (H, W) or (H, W, C) float32 [0, 1] or uint8 (same dtype back). Shrinking uses
    area averaging (no aliasing); enlarging (only with `allow_upscale`) uses bicubic, clipped
    back to the input's range. Returns the input itself when no resize is needed.
    """
    if max_side < 1:
        raise ValueError(f"resize_max_side: max_side must be >= 1, got {max_side}")
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest == max_side or (longest < max_side and not allow_upscale):
        return image
    scale = max_side / longest
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if image.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[:, :, None]
    if scale > 1 and image.dtype != np.uint8:
        resized = np.clip(resized, 0.0, 1.0)
    return resized.astype(image.dtype, copy=False)


#: Longest side and quality of the small JPEGs the status page shows (thumbnails, previews).
THUMB_SIDE = 256
THUMB_QUALITY = 80


def write_jpeg(image: Image.Image, path: Path, side: int = THUMB_SIDE) -> None:
    """``image`` shrunk to at most ``side`` px, as a JPEG at ``path`` (temp + rename).

    For the status page's thumbnails (web) and a running job's live preview (its worker): the
    page's server may read the file at any moment, so it appears whole or not at all; the
    temporary name holds the process and thread, as several threads may write one picture.
    """
    image = image.copy()
    image.thumbnail((side, side))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    image.save(temp, "JPEG", quality=THUMB_QUALITY)
    os.replace(temp, path)

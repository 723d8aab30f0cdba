"""A file's first bytes against what its name claims: the cheap check made at intake.

The daemon refuses a `.jpg` that holds text (or a `.mp4` that holds a PNG) before the file
takes a worker's turn: `check_signature` reads 16 bytes. The check is by kind, not by exact
format: a PNG named `.jpg` is still an image every decoder of nstd reads by its content, and
phones and web sites mislabel photos often enough that refusing it would help nobody. The
decoders themselves also pick the format from these bytes, never from the name
(`nstd.media.images`, `nstd.media.container`).
"""

from __future__ import annotations

import os

from nstd.errors import InputError
from nstd.media.files import open_regular

HEAD_BYTES = 16

IMAGE_SUFFIXES: dict[str, str] = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF",
}
VIDEO_SUFFIXES: dict[str, str] = {
    ".mp4": "an MP4", ".m4v": "an MP4", ".mov": "a MOV", ".mkv": "a Matroska",
    ".webm": "a WebM", ".avi": "an AVI",
}
# QuickTime/MP4 top-level atoms a file can start with (the type sits at bytes 4..8).
QT_ATOMS = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


def image_format(head: bytes) -> str | None:
    """PNG, JPEG, WebP, BMP or TIFF from a file's first bytes; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def container_format(head: bytes) -> str | None:
    """The demuxer nstd opens a video with (matroska, mov, avi) from its first bytes; None
    when it is no container nstd reads."""
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[4:8] in QT_ATOMS:
        return "mov"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    return None


def describe(head: bytes) -> str:
    """What the first bytes look like, for a message: ``a PNG image``, ``text``..."""
    image = image_format(head)
    if image is not None:
        return f"a {image} image"
    container = container_format(head)
    if container is not None:
        return {"matroska": "a Matroska/WebM video", "mov": "an MP4/MOV video",
                "avi": "an AVI video"}[container]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # a multi-byte character cut at the end counts as text too
        text = head[:-3].decode("utf-8", errors="replace")
    if text and all(c.isprintable() or c in "\t\r\n" for c in text) and "\ufffd" not in text:
        return "text"
    return "no image or video format nstd reads"


def check_signature(path: str | os.PathLike[str], name: str) -> None:
    """Refuse a file whose first bytes are not a format of the kind its extension names.

    ``name`` is the user's name for the file (``inbox/holiday.jpg``): the message says it.
    Raises InputError (refused), OSError (cannot be read now). Names nstd does not take
    (neither image nor video extension) pass: they are not its business here.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in IMAGE_SUFFIXES:
        claimed, ok = f"a {IMAGE_SUFFIXES[suffix]} image", image_format
    elif suffix in VIDEO_SUFFIXES:
        claimed, ok = f"{VIDEO_SUFFIXES[suffix]} video", container_format
    else:
        return
    with open_regular(path, name) as handle:
        head = handle.read(HEAD_BYTES)
    if ok(head) is None:
        raise InputError(f"{name} is not {claimed}: its first bytes are {describe(head)}")

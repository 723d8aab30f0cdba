"""Style masks for a dropped file, named by its sidecar.

    inbox/street.jpg
    inbox/street.jpg.yaml          style_masks:
                                     starry: sky.mask.png       # this style where white
                                     mosaic: ground.mask.png
    inbox/sky.mask.png             greyscale, the photo's aspect ratio
    inbox/ground.mask.png

- A mask file lies in the same inbox folder as its input and its name ends in
  ``.mask.<image extension>``: the watcher never takes such a file as a job, so the masks can
  be copied in before, with or after the photo, and several photos can share them. The daemon
  never moves or deletes a mask file (it is the user's, like a style image).
- The sidecar's ``style_masks`` maps each style name to its mask, in order; it replaces
  ``style_name`` (giving both is an error). From 1 to `MAX_MASKS` styles.
- Everything is checked at intake, before the job is queued: the names (plain file names, no
  path, nothing hidden), the files (regular, not links), each mask decodes, is not all black,
  and has the photo's aspect ratio (a video's is checked when its job starts: a video is only
  probed by its worker). A job whose masks fail these checks fails at once with the reason.
- At claim the masks are copied into the job's own folder (`link_masks`), so the job keeps
  what was checked even if the files change or go while it runs; for a video the stored
  frames' fingerprint includes the masks' contents.
- For a video, each mask applies to every frame (a static camera).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nstd.errors import InputError, NstdError, UsageError
from nstd.geometry import same_aspect
from nstd.media.files import open_regular
from nstd.media.images import IMAGE_EXTENSIONS, image_size, read_image

MASKS_KEY = "style_masks"
MASKS_FOLDER = "masks"  # work/<job id>/input/masks/: the copies a job reads
MASK_INFIX = ".mask"
MAX_MASKS = 8
# Masks are checked at this size at intake: enough to see that one is not all black.
_CHECK_SIDE = 256


def is_mask_name(name: str) -> bool:
    """True for ``*.mask.<image extension>`` (case-insensitive): a style mask, never a job."""
    stem, suffix = os.path.splitext(os.path.basename(name))
    return suffix.lower() in IMAGE_EXTENSIONS and stem.lower().endswith(MASK_INFIX) and \
        len(stem) > len(MASK_INFIX)


def parse_masks(value: Any) -> tuple[tuple[str, str], ...]:
    """The sidecar's ``style_masks`` value -> ((style, mask file name), ...) in order.

    Raises UsageError naming what is wrong (not a mapping, too many, a name with a path).
    """
    if not isinstance(value, Mapping) or not value:
        raise UsageError(f"{MASKS_KEY}: must map each style name to its mask file, e.g. "
                         f"{MASKS_KEY}: {{starry: sky.mask.png, mosaic: ground.mask.png}}")
    if len(value) > MAX_MASKS:
        raise UsageError(f"{MASKS_KEY}: {len(value)} styles; at most {MAX_MASKS}")
    pairs = []
    for style, mask in value.items():
        if not isinstance(style, str) or not isinstance(mask, str) or not mask:
            raise UsageError(f"{MASKS_KEY}: {style!r}: give a style name and a mask file "
                             f"name, e.g. starry: sky.mask.png")
        if mask != os.path.basename(mask) or mask.startswith(".") or "\\" in mask or \
                "\0" in mask:
            raise UsageError(f"{MASKS_KEY}.{style}: {mask!r} must be a plain file name in the "
                             "same folder as the input")
        if not is_mask_name(mask):
            stem, suffix = os.path.splitext(mask)
            raise UsageError(f"{MASKS_KEY}.{style}: {mask} must be named *{MASK_INFIX}.png "
                             f"(or another image extension) so the daemon never takes it as "
                             f"a photo; rename it to {stem}{MASK_INFIX}{suffix or '.png'}")
        pairs.append((style, mask))
    return tuple(pairs)


def mask_path(inbox: Path, source: str, mask: str) -> Path:
    """Where the mask of the input ``source`` (inbox-relative) lies: beside it in the inbox,
    also when the input itself is being retried from failed/."""
    return inbox / Path(source).parent / mask


def check_mask_file(path: Path, shown: str, image: Path | None, max_pixels: int) -> None:
    """InputError unless ``path`` is a regular file that decodes to a mask that is not all
    black and, when ``image`` (a photo) is given, has its aspect ratio. ``shown``: the name
    the user knows the mask by (``inbox/sky.mask.png``)."""
    if os.path.islink(path):
        raise InputError(f"style mask {shown} is a symbolic link; put the file itself in the "
                         "inbox")
    if not os.path.lexists(path):
        raise InputError(f"style mask {shown} is missing; put it beside its input")
    try:
        loaded = read_image(path, max_pixels, max_side=_CHECK_SIDE)
    except NstdError as exc:  # unreadable, or an I/O error: either way the job cannot start
        raise InputError(f"style mask {str(exc).replace(str(path), shown)}") from None
    if float(loaded.rgb.max()) <= 0.0:
        raise InputError(f"style mask {shown} is empty (all black); paint white where its "
                         "style should apply")
    if image is None:
        return
    try:
        height, width = image_size(image)
    except NstdError:
        return  # the input's own problem: reported for the input, not for its mask
    if not same_aspect((loaded.height, loaded.width), (height, width)):
        raise InputError(f"style mask {shown} is {loaded.width}x{loaded.height} but the image "
                         f"is {width}x{height}; a mask must have the image's aspect ratio")


def check_masks(pairs: Sequence[tuple[str, str]], inbox: Path, source: str, input_path: Path,
                kind: str | None, max_pixels: int) -> None:
    """Intake's check of a job's masks (see the module docstring). Raises InputError."""
    for _, mask in pairs:
        check_mask_file(mask_path(inbox, source, mask), shown_name(inbox, source, mask),
                        input_path if kind == "image" else None, max_pixels)


def shown_name(inbox: Path, source: str, mask: str) -> str:
    """A mask as the user knows it: ``inbox/sky.mask.png``, ``inbox/starry/sky.mask.png``."""
    return (Path(inbox.name) / Path(source).parent / mask).as_posix()


def link_masks(paths: Sequence[Path], folder: Path) -> tuple[Path, ...]:
    """Copy each mask into ``folder`` (the job's own) as ``<i>.<name>``; return the copies.

    A copy, not a link: a mask may be edited in place for the next photo while this job
    runs. Read without following links (InputError for one), written to a temporary name,
    then renamed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index, path in enumerate(paths):
        target = folder / f"{index}.{path.name}"
        temp = target.with_name(f".{target.name}.part")
        try:  # never through a link swapped in since the check (the inbox is hostile)
            source = open_regular(path, f"style mask {path.name}")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(f"style mask {path.name} is a symbolic link; put the file "
                                 "itself in the inbox") from None
            raise
        with source as src, open(temp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(temp, target)
        copies.append(target)
    return tuple(copies)

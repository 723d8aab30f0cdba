"""What `nstd styles` shows: every style image, its size, and which inbox folder uses it.

The daemon looks a style up when it queues a file and again when it runs the job
(`nstd.daemon.intake.resolve_style`), never caches the list: an image dropped into the styles
folder is usable at once, without a restart. This module applies that same lookup to every
name, so what it lists is what the daemon would take. No torch (the header is read by PIL).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from nstd.config import Config
from nstd.daemon.intake import resolve_style
from nstd.errors import ConfigError, InputError
from nstd.media.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class StyleInfo:
    """One style: ``name`` (what an inbox sub-folder or a sidecar's ``style_name`` says),
    ``file`` (inside the styles folder), ``width`` x ``height`` in pixels and ``bytes`` (None
    when unreadable), ``used_by`` (inbox folders, ``inbox/`` for the default style) and
    ``problem`` (why the daemon would refuse it, else None)."""

    name: str
    file: str | None
    width: int | None
    height: int | None
    bytes: int | None
    used_by: tuple[str, ...]
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["used_by"] = list(self.used_by)
        return data


def _names(styles: Path) -> list[str]:
    return sorted({Path(e).stem for e in os.listdir(styles)
                   if not e.startswith(".") and Path(e).suffix.lower() in IMAGE_EXTENSIONS})


def _size(path: Path) -> tuple[int | None, int | None, str | None]:
    try:
        with Image.open(path) as image:  # the header only: no decoding
            width, height = image.size
        return width, height, None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a broken file
        return None, None, f"not a readable image ({type(exc).__name__})"


def list_styles(config: Config) -> tuple[Path, list[StyleInfo], list[str]]:
    """The styles folder, every style in it (sorted by name), and the problems the daemon
    would hit (a missing default style, inbox sub-folders without a style).

    Raises `ConfigError` when ``daemon.styles`` is not a readable folder.
    """
    d = config.daemon
    styles, inbox = Path(d.styles), Path(d.inbox)
    try:
        names = _names(styles)
    except OSError as exc:
        raise ConfigError([f"daemon.styles: cannot read {styles} ({exc.strerror or exc}); "
                           "create it and put style images in it"]) from None
    subfolders: list[str] = []
    try:
        subfolders = sorted(e.name for e in os.scandir(inbox)
                            if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    except OSError:
        pass  # no inbox yet: nothing uses a style so far
    found: list[StyleInfo] = []
    for name in names:
        used = (["inbox/ (daemon.default_style)"] if name == d.default_style else [])
        used.append(f"inbox/{name}/")
        try:
            path = resolve_style(styles, name)
        except InputError as exc:  # e.g. two images with the same name
            found.append(StyleInfo(name, None, None, None, None, tuple(used), str(exc)))
            continue
        width, height, problem = _size(path)
        found.append(StyleInfo(name, path.name, width, height, path.stat().st_size,
                               tuple(used), problem))
    problems = []
    if d.default_style not in names:
        problems.append(f"daemon.default_style {d.default_style!r} has no image in {styles}: "
                        "files dropped at the inbox root fail until you add one")
    for folder in subfolders:
        if folder not in names:
            problems.append(f"inbox/{folder}/ has no style image {folder}.<png|jpg|...> in "
                            f"{styles}: files there fail until you add one")
    return styles, found, problems


def format_styles(styles: Path, found: list[StyleInfo], problems: list[str]) -> str:
    """The human-readable `nstd styles`: one aligned row per style, then the problems."""
    lines = [f"styles in {styles}:" if found else f"no style images in {styles}"]
    rows = [(s.name, s.file or "-",
             f"{s.width}x{s.height}" if s.width is not None else "-",
             f"{s.bytes:,} bytes" if s.bytes is not None else "-",
             ", ".join(s.used_by) + (f"  [{s.problem}]" if s.problem else ""))
            for s in found]
    widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[4]]))
    lines += [f"problem: {p}" for p in problems]
    lines.append(f"add one: put <name>.png into {styles}; files in inbox/<name>/ use it "
                 "(no restart needed)")
    return "\n".join(lines)

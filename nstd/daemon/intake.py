"""From a settled inbox file to what its job needs: the style and the per-job settings.

    inbox/photo.jpg              -> daemon.default_style
    inbox/<name>/clip.mp4        -> styles/<name>.<ext>   (the first sub-folder names the style)
    inbox/.../clip.mp4.yaml      -> optional sidecar: `style_name: NAME` picks the style, and
                                    the same sections and keys as config.yaml override settings;
                                    `style_masks: {NAME: FILE.mask.png, ...}` gives each style a
                                    region (nstd.daemon.maskfiles)

Everything here treats the inbox as hostile:
- a style name is a plain file stem: no path separators, no `..`, nothing hidden, and the file
  it names must lie inside `daemon.styles` after resolving symlinks;
- a sidecar is read without following symlinks or blocking (a FIFO), at most `SIDECAR_MAX_BYTES`,
  with `yaml.safe_load`, and refused when its YAML aliases expand beyond `SIDECAR_MAX_NODES`;
- a sidecar may not change where the daemon reads or writes, nor raise the decoder limits:
  the `daemon`, `cluster` and `limits` sections, `model.weights`, `model.device`, the memory
  budget (`model.max_memory_gb`, `model.auto_memory_share`) and `style.init_image` are refused
  (they would let anyone who can write to the inbox read files elsewhere, get past the size
  checks or take the machine's memory; where jobs run is the daemon's choice, not a job's).
"""

from __future__ import annotations

import copy
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from nstd.config import Config
from nstd.config_files import merge_overrides
from nstd.daemon.jobspec import check_job, kind_of
from nstd.daemon.maskfiles import MASKS_KEY, check_masks, parse_masks
from nstd.errors import ConfigError, InputError, UsageError
from nstd.media.files import open_regular
from nstd.media.images import IMAGE_EXTENSIONS
from nstd.media.signature import check_signature

SIDECAR_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")
SIDECAR_MAX_BYTES = 64 * 1024
SIDECAR_MAX_NODES = 10_000
STYLE_KEY = "style_name"

# Sidecar keys a job may not set (section, or (section, key)); see the module docstring.
_FORBIDDEN_SECTIONS = ("daemon", "cluster", "limits")
_FORBIDDEN_KEYS = (("model", "weights"), ("model", "device"), ("model", "max_memory_gb"),
                   ("model", "auto_memory_share"), ("style", "init_image"))


@dataclass(frozen=True)
class Intake:
    """What the ledger stores for one inbox file.

    ``error`` is set when the job must fail at once (unknown style, invalid sidecar); ``style``
    is then the best guess, for the record.
    """

    source: str  # POSIX path relative to the inbox
    style: str
    settings: dict[str, Any] = field(default_factory=dict)  # the sidecar's overrides
    sidecar: Path | None = None
    error: str | None = None
    # ((style, mask file name), ...) from the sidecar's style_masks; ``style`` is then the
    # styles joined by "+" (the output's label)
    masks: tuple[tuple[str, str], ...] = ()
    # The file itself is refused (its first bytes are not what its name says): like a file
    # a worker found unreadable, it goes to failed/ only if it stays unchanged a while (a
    # copy that paused is not a broken file).
    unreadable: bool = False


# --------------------------------------------------------------------------- paths


def relative_source(inbox: Path, path: Path) -> str:
    """``inbox/a/b.png`` -> ``"a/b.png"`` (POSIX). ValueError when outside the inbox."""
    return PurePosixPath(*path.relative_to(inbox).parts).as_posix()


def user_name(inbox: Path, source: str) -> str:
    """The file as the user knows it, for messages: ``inbox/holiday.jpg`` (the inbox folder's
    own name, then the inbox-relative path), never a path inside the daemon's work folder."""
    return f"{inbox.name}/{source}"


def folder_style(source: str) -> str | None:
    """The style named by the first sub-folder of a relative source path; None at the root."""
    parts = PurePosixPath(source).parts
    return parts[0] if len(parts) > 1 else None


def sidecar_for(path: Path) -> Path | None:
    """The sidecar beside ``path`` (``<file>.yaml`` or ``<file>.yml``) if one exists."""
    for suffix in SIDECAR_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if os.path.lexists(candidate):
            return candidate
    return None


# --------------------------------------------------------------------------- styles


def check_style_name(name: str) -> None:
    """Refuse names that could leave the styles folder. Raises InputError."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name):
        raise InputError(f"style name {name!r} is not allowed; use the plain name of a file in "
                         "the styles folder, e.g. mosaic")


def resolve_style(styles: Path, name: str) -> Path:
    """The style image ``styles/<name>.<ext>`` (or ``styles/<name>`` if it has an image
    extension), checked to resolve inside ``styles``. Raises InputError."""
    check_style_name(name)
    root = styles.resolve()
    try:
        entries = sorted(os.listdir(root))
    except OSError as exc:
        raise InputError(f"cannot read the styles folder {styles}: {exc.strerror}") from None
    if Path(name).suffix.lower() in IMAGE_EXTENSIONS and name in entries:
        matches = [name]
    else:
        matches = [e for e in entries
                   if Path(e).stem == name and Path(e).suffix.lower() in IMAGE_EXTENSIONS]
    if not matches:
        known = sorted({Path(e).stem for e in entries
                        if Path(e).suffix.lower() in IMAGE_EXTENSIONS and not e.startswith(".")})
        raise InputError(f"no style image named {name!r} in {styles} "
                         f"(available: {', '.join(known) or 'none'})")
    if len(matches) > 1:
        raise InputError(f"style {name!r} is ambiguous in {styles} ({', '.join(matches)}); "
                         "keep one of them")
    path = root / matches[0]
    real = path.resolve()
    if not real.is_relative_to(root):
        raise InputError(f"style image {path} points outside {styles}; copy the image into "
                         "the styles folder instead of linking it")
    if not real.is_file():
        raise InputError(f"style image {path} is not a regular file")
    return path


def style_label(style_path: Path) -> str:
    """The style's name as used in output file names: the image's stem."""
    return style_path.stem


# --------------------------------------------------------------------------- sidecars


def read_sidecar(path: Path) -> dict[str, Any]:
    """Read a sidecar safely (see the module docstring). Raises InputError (cannot be read)
    or ConfigError (not a mapping, too complex)."""
    try:
        handle = open_regular(path, f"sidecar {path.name}")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"sidecar {path.name} is a symbolic link; put the file itself "
                             "beside its input") from None
        raise InputError(f"cannot read sidecar {path.name}: {exc.strerror}") from None
    with handle:
        data = handle.read(SIDECAR_MAX_BYTES + 1)
    if len(data) > SIDECAR_MAX_BYTES:
        raise ConfigError(f"sidecar {path.name} is larger than {SIDECAR_MAX_BYTES // 1024} KiB")
    try:
        loaded = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"sidecar {path.name} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"sidecar {path.name} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"sidecar {path.name}: the top level must be a mapping of sections")
    _check_size(loaded, path)
    return loaded


def _check_size(value: Any, path: Path) -> None:
    """Refuse alias bombs: count nodes as if aliases were expanded, stopping at the limit."""
    budget = SIDECAR_MAX_NODES
    stack = [value]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"sidecar {path.name} is too complex (more than "
                              f"{SIDECAR_MAX_NODES} values once aliases are expanded)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def split_sidecar(data: Mapping[str, Any], name: str) -> tuple[str | None, dict[str, Any]]:
    """``(style_name or None, overrides)``; checks the keys a job may not set (ConfigError).
    The masks are read by `sidecar_masks`."""
    overrides = {k: v for k, v in data.items() if k not in (STYLE_KEY, MASKS_KEY)}
    style = data.get(STYLE_KEY)
    problems = []
    if STYLE_KEY in data and (not isinstance(style, str) or not style):
        problems.append(f"{STYLE_KEY}: must be the name of a style image, got {style!r}")
    if STYLE_KEY in data and MASKS_KEY in data:
        problems.append(f"{STYLE_KEY} and {MASKS_KEY}: give one ({MASKS_KEY} names every "
                        "style with its mask)")
    for section in _FORBIDDEN_SECTIONS:
        if section in overrides:
            problems.append(f"{section}: cannot be set per job (only in config.yaml)")
    for section, key in _FORBIDDEN_KEYS:
        values = overrides.get(section)
        if isinstance(values, Mapping) and key in values:
            problems.append(f"{section}.{key}: cannot be set per job (only in config.yaml)")
    if problems:
        raise ConfigError(problems, source=f"sidecar {name}")
    return (style if isinstance(style, str) else None), overrides


def sidecar_masks(data: Mapping[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    """The sidecar's ``style_masks`` as ((style, mask file), ...); () without it.
    Raises ConfigError naming the sidecar."""
    if MASKS_KEY not in data:
        return ()
    try:
        return parse_masks(data[MASKS_KEY])
    except UsageError as exc:
        raise ConfigError([str(exc)], source=f"sidecar {name}") from None


def job_config(config: Config, settings: Mapping[str, Any], base_dir: Path,
               origin: str | None = None) -> Config:
    """The daemon's config with one job's overrides, validated like config.yaml.

    Raises ConfigError naming each bad key, and `origin` (the sidecar) as where it was set.
    """
    if not settings:
        return config
    return merge_overrides(config, copy.deepcopy(dict(settings)), base_dir, origin)


# --------------------------------------------------------------------------- the whole step


def take(inbox: Path, path: Path, config: Config) -> Intake:
    """Decide the style and settings of the settled file ``path`` (inside ``inbox``).

    Never raises for a problem with the file's sidecar or style: the returned `Intake`
    carries the reason in ``error`` and the job fails with it.
    """
    return decide(relative_source(inbox, path), path, config)


def decide(source: str, path: Path, config: Config) -> Intake:
    """`take` for a file that lies at ``path`` now but is the inbox's ``source`` (e.g. a
    failed file about to be retried: its sidecar is read where it lies)."""
    inbox = Path(config.daemon.inbox)
    style = folder_style(source) or config.daemon.default_style
    sidecar = sidecar_for(path)
    settings: dict[str, Any] = {}
    masks: tuple[tuple[str, str], ...] = ()
    try:
        if sidecar is not None:
            data = read_sidecar(sidecar)
            named, settings = split_sidecar(data, sidecar.name)
            masks = sidecar_masks(data, sidecar.name)
            style = "+".join(s for s, _ in masks) if masks else named or style
        # Validate now (the ledger stores the overrides): the merged config, and what the
        # job's kind needs from it (nstd.daemon.jobspec.check_job).
        merged = job_config(config, settings, inbox,
                            f"sidecar {sidecar.name}" if sidecar else None)
        problems = check_job(merged, kind_of(path))
        if problems:
            raise ConfigError(problems, source=f"sidecar {sidecar.name}" if sidecar else
                              "settings")
        for name in [s for s, _ in masks] or [style]:
            resolve_style(Path(config.daemon.styles), name)
        check_masks(masks, inbox, source, path, kind_of(path), config.limits.max_pixels)
        size = os.lstat(path).st_size
        if size > config.limits.max_file_bytes:
            raise InputError(f"{path.name} is {size} bytes, more than limits.max_file_bytes "
                             f"({config.limits.max_file_bytes})")
    except ConfigError as exc:
        reason = exc.reason(f"sidecar {sidecar.name}" if sidecar else "settings")
        return Intake(source, _printable(style), {}, sidecar, reason)
    except InputError as exc:
        return Intake(source, _printable(style), {}, sidecar, str(exc))
    except OSError as exc:  # the file vanished or became unreadable meanwhile
        return Intake(source, _printable(style), {}, sidecar,
                      f"cannot read {path.name}: {exc.strerror or exc}")
    try:  # 16 bytes: a text file named .jpg never takes a worker's turn
        check_signature(path, user_name(inbox, source))
    except InputError as exc:
        return Intake(source, style, settings, sidecar, str(exc), unreadable=True, masks=masks)
    except OSError as exc:
        return Intake(source, style, settings, sidecar,
                      f"cannot read {path.name}: {exc.strerror or exc}", masks=masks)
    return Intake(source, style, settings, sidecar, masks=masks)


def _printable(value: Any) -> str:
    return value if isinstance(value, str) and value else repr(value)

"""Configuration from files and overrides: `load_config(path, overrides)` reads the file,
applies ``--set section.key=value`` overrides (typed like YAML) and resolves the daemon's
folders against the config file's folder; `merge_overrides` lays a job's sidecar over the
configuration. Everything is validated by `nstd.config.parse_config`, and every problem names
where its key was written (the file, the ``--set``, the sidecar).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nstd.config import Config, parse_config, to_mapping
from nstd.errors import ConfigError


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (or nothing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read {path}: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{path} is not valid YAML{where}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


def apply_override(mapping: dict[str, Any], assignment: str) -> str:
    """Apply one `section.key=value` override in place (the value is parsed as YAML); return
    its key path (``section.key``)."""
    key_path, sep, text = assignment.partition("=")
    parts = key_path.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError([f"--set {assignment!r}: expected section.key=value"])
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError([f"--set {key_path}: value {text!r} is not valid YAML"]) from None
    node = mapping
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"--set {key_path}: {part} is not a section"])
        node = child
    node[parts[-1]] = value
    return ".".join(parts)


#: An override: ``"section.key=value"`` (written ``--set section.key=value``), or such an
#: assignment with the words that wrote it (``("model.weights=...", "--weights vgg.pth")``).
Override = str | tuple[str, str]


def load_config(
    path: Path | None = None,
    overrides: Sequence[Override] = (),
    *,
    cwd: Path | None = None,
) -> Config:
    """Load the configuration the CLI uses.

    `path` None means `config.yaml` in the current folder if it exists, else built-in defaults.
    Relative paths in the file resolve against the file's folder (against `cwd` without a file).
    A problem names where its key was written: the file, or the ``--set`` that set it.
    """
    cwd = cwd or Path.cwd()
    if path is None and (cwd / "config.yaml").is_file():
        path = cwd / "config.yaml"
    mapping: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    label = str(path) if path is not None else None
    origins = key_origins(mapping, label) if label is not None else {}
    for override in overrides:
        assignment, words = (override, f"--set {override}") if isinstance(override, str) \
            else override
        key_path = apply_override(mapping, assignment)
        origins[key_path] = words
        parts = key_path.split(".")
        for n in range(1, len(parts)):  # a section the override alone brought in
            origins.setdefault(".".join(parts[:n]), words)
    base = path.parent.absolute() if path is not None else cwd
    return parse_config(mapping, base_dir=base, origins=origins, origin=label)


def key_origins(mapping: Mapping[Any, Any], origin: str) -> dict[str, str]:
    """``{"style": origin, "style.max_side": origin, ...}`` for the sections and keys of a
    mapping read from one place (a file, a sidecar)."""
    origins: dict[str, str] = {}
    for section, values in mapping.items():
        origins[str(section)] = origin
        if isinstance(values, Mapping):
            for key in values:
                origins[f"{section}.{key}"] = origin
    return origins


def merge_overrides(config: Config, mapping: Mapping[str, Any], base_dir: Path,
                    origin: str | None = None) -> Config:
    """Return `config` with the sections/keys in `mapping` replaced (a job's sidecar).

    The result is validated exactly like a config file; unknown keys are errors, and every
    problem names `origin` (``sidecar clip.mp4.yaml``): `config` itself was valid.
    """
    merged = to_mapping(config)
    for section, values in mapping.items():
        if section in merged and isinstance(values, Mapping):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    origins = key_origins(mapping, origin) if origin is not None else None
    return parse_config(merged, base_dir=base_dir, origins=origins, origin=origin)

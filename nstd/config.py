"""Typed, validated configuration.

One frozen dataclass per section of `config.yaml`. `parse_config(mapping)` is pure: it checks
every key against the dataclass fields (unknown keys are errors), converts YAML scalars to the
declared types, and raises one `ConfigError` listing every bad key path with what is allowed.
Reading files and applying overrides is `nstd.config_files` (`load_config`).

The schema lives here and only here: the field's `metadata` holds its one-line description and
constraints, and `config.yaml` at the repository root is written from them
(`nstd.config_yaml`, `nstd check-config --print-defaults`; a test checks that it is current).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from nstd.errors import ConfigError
from nstd.hours import check_window
from nstd.http_address import check_http

DEFAULT_STYLE_LAYERS: dict[str, float] = {
    "relu1_1": 1.0,
    "relu2_1": 1.0,
    "relu3_1": 1.0,
    "relu4_1": 1.0,
    "relu5_1": 1.0,
}


def _opt(default: Any, doc: str, **rules: Any) -> Any:
    """A dataclass field with its description and validation rules (min, max, choices...)."""
    if isinstance(default, (dict, list, tuple)):
        value = default
        return field(default_factory=lambda: _copy(value), metadata={"doc": doc, **rules})
    return field(default=default, metadata={"doc": doc, **rules})


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


@dataclass(frozen=True)
class ModelConfig:
    weights: str | None = _opt(
        None, "VGG-19 state dict file; null = torchvision IMAGENET1K_V1 (downloaded once, cached)"
    )
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N", pattern="device")
    pooling: Literal["max", "avg"] = _opt("max", "max (torchvision) or avg (as Gatys et al.)")
    precision: Literal["fp32", "bf16"] = _opt(
        "fp32", "bf16 = autocast the network on CUDA; Grams and losses stay fp32"
    )
    channels_last: bool = _opt(True, "channels_last memory format on CUDA")
    compile: bool = _opt(False, "torch.compile the network on CUDA (each new size compiles once)")
    max_memory_gb: float | Literal["auto"] = _opt(
        "auto", "memory one image's optimization may use, GiB; auto = auto_memory_share of "
        "free CUDA memory or available RAM. Larger images are optimized tile by tile, exactly "
        "(README \"Large images\"); out of memory in a job halves it for the next attempt",
        min=0.01)
    auto_memory_share: float = _opt(
        0.5, "share of the free memory that max_memory_gb: auto takes", min=0.01, max=1.0)


@dataclass(frozen=True)
class StyleConfig:
    content_layer: str = _opt("relu4_2", "VGG-19 layer whose features define content", layer=True)
    content_weight: float = _opt(1.0, "alpha: weight of the content loss", min=0.0)
    style_layers: dict[str, float] = _opt(
        DEFAULT_STYLE_LAYERS, "layer name -> weight of its Gram-matrix loss", layer=True
    )
    style_weight: float = _opt(1.0e6, "beta: weight of the style loss", min=0.0)
    tv_weight: float = _opt(1.0e-2, "gamma: weight of the total-variation loss", min=0.0)
    max_side: int = _opt(512, "longest side of the output in pixels (aspect ratio kept)", min=16)
    scales: tuple[float, ...] = _opt(
        (0.5, 1.0), "coarse-to-fine scales as fractions of max_side, ascending, last 1.0"
    )
    min_scale_side: int = _opt(64, "coarser scales whose longest side is below this are skipped",
                               min=16)
    iterations: int = _opt(
        300, "iterations (= network evaluations) at the final scale", min=0)
    coarse_iterations: int = _opt(
        150, "iterations (= network evaluations) at each coarser scale", min=0)
    optimizer: Literal["lbfgs", "adam"] = _opt(
        "lbfgs", "lbfgs (box-constrained, line search; default) or adam")
    learning_rate: float = _opt(0.02, "Adam step size (image values are in [0, 1])", min=0.0)
    lbfgs_history: int = _opt(20, "L-BFGS history size", min=1)
    tolerance: float = _opt(1.0e-4, "early stop: relative loss change below this ...", min=0.0)
    tolerance_window: int = _opt(50, "... over this many iterations (tolerance 0 disables)", min=1)
    init: Literal["content", "noise", "image"] = _opt("content", "start image")
    init_image: str | None = _opt(None, "start image file when init is 'image'")
    seed: int = _opt(0, "random seed (noise init); same seed + device = same result")
    style_scale: float = _opt(1.0, "style image longest side relative to the output's", min=0.01)
    preserve_color: bool = _opt(False, "transfer style to luminance only, keep content colours")


@dataclass(frozen=True)
class VideoConfig:
    init: Literal["warped", "previous", "content"] = _opt(
        "warped", "start of frame t: previous stylized frame warped by flow, unwarped, or content"
    )
    temporal_tolerance: float | None = _opt(
        2.0, "grey levels (0-255) a reliable pixel of a warm frame may move from where the flow "
        "says it came from in the previous stylized frame; null: no limit (warm start only)",
        min=0.0)
    frame_target: float = _opt(
        0.97, "a warm frame stops once its loss is at most this times the shot's reference "
        "(the loss of its cold first frame); 0: always run frame_iterations", min=0.0)
    frame_iterations: int = _opt(40, "most iterations (= network evaluations) of a warm frame",
                                 min=0)
    frame_tolerance: float = _opt(
        0.001, "early stop of a warm frame: relative loss change below this ...", min=0.0
    )
    frame_tolerance_window: int = _opt(
        5, "... over this many iterations (frame_tolerance 0 disables)", min=1
    )
    scene_cut_threshold: float = _opt(0.5, "scene-cut score above which a frame starts cold",
                                      min=0.0)
    crf: int = _opt(18, "H.264 quality (0 = lossless, 51 = worst)", min=0, max=51)
    preset: str = _opt("medium", "x264 preset (ultrafast ... veryslow)", choices=(
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
        "veryslow"))


@dataclass(frozen=True)
class LimitsConfig:
    max_pixels: int = _opt(50_000_000, "largest input image or video frame, in pixels", min=1)
    max_file_bytes: int = _opt(20 * 1024**3, "largest input file, in bytes", min=1)
    max_video_seconds: float = _opt(4 * 3600.0, "longest input video, in seconds", min=0.0)
    max_video_frames: int = _opt(500_000, "most frames in an input video", min=1)
    max_iterations: int = _opt(
        10_000, "most style.iterations / style.coarse_iterations a job may ask for", min=0)
    max_frame_iterations: int = _opt(
        1_000, "most video.frame_iterations (a warm frame's budget) a job may ask for", min=0)


@dataclass(frozen=True)
class DaemonConfig:
    root: str = _opt(".", "base folder: relative folder keys below are inside it (relative: "
                     "to this file's folder)")
    inbox: str = _opt("data/inbox", "watched folder (relative paths: to daemon.root)")
    outbox: str = _opt("data/outbox", "finished results")
    work: str = _opt("data/work", "per-job work folders (stored frames: the resume points)")
    failed: str = _opt("data/failed", "sources that failed, with <name>.error.txt")
    done: str = _opt("data/done", "sources whose result was verified")
    styles: str = _opt("styles", "style images: inbox/<name>/ uses styles/<name>.<ext>")
    state: str = _opt("data/state", "where the job ledger (SQLite) lives")
    default_style: str = _opt("mosaic", "style for files dropped at the inbox root")
    settle_seconds: float = _opt(5.0, "a file is taken once unchanged this long", min=0.0)
    poll: bool = _opt(False, "poll the inbox instead of inotify (network mounts)")
    rescan_seconds: float = _opt(60.0, "safety-net rescan of the inbox", min=1.0)
    max_attempts: int = _opt(3, "attempts before a job fails for good", min=1)
    retry_backoff_seconds: float = _opt(30.0, "first retry delay, doubled each attempt", min=0.0)
    min_free_mb: float = _opt(
        500.0, "MB left free on the work and outbox disks beyond a job's estimated needs; "
        "short of that, no job starts and a running one stops between frames", min=0.0)
    originals: Literal["move", "keep", "delete"] = _opt(
        "move", "what happens to a source once its result is verified"
    )
    lease_seconds: float = _opt(600.0, "a running job's lease, renewed while it works", min=1.0)
    workers: int | Literal["auto"] = _opt(
        "auto", "worker processes: auto = one per visible CUDA device (1 on a CPU), or N", min=1)
    stall_seconds: float = _opt(
        300.0, "a busy worker silent this long is killed (its job counts an attempt)", min=1.0)
    # Overnight habits (nstd.daemon.schedule, nstd.daemon.hooks).
    active_hours: str | None = _opt(
        None, "work only from start to end, local time, e.g. \"22:00-07:00\" (crosses "
        "midnight); null: always. Outside it the running job stops between frames and nothing "
        "new starts", check="active_hours")
    on_event: str | tuple[str, ...] | None = _opt(
        None, "command run (no shell) when a job is done or failed and when the queue empties: "
        "\"notify-send nstd\" or a list; env NSTD_EVENT, NSTD_SOURCE, NSTD_OUTPUT, NSTD_REASON, "
        "NSTD_SECONDS; null: none")
    on_event_timeout: float = _opt(
        30.0, "on_event: killed after this many seconds (logged, never fails a job)", min=1.0)
    notify_urls: tuple[str, ...] = _opt(
        (), "Apprise URLs told of the same events, e.g. [\"mailto://user:pass@example.com\"] "
        "(pip install 'nstd[notify]')")
    # The status page and /metrics (nstd.web; README "Status page").
    http: str | None = _opt(
        "127.0.0.1:8765", "status page and /metrics (README \"Status page\"), HOST:PORT; null: "
        "off. Any address but loopback needs http_token")
    http_token: str | None = _opt(
        None, "bearer token every request to daemon.http needs (Authorization: Bearer TOKEN, "
        "or open /?token=TOKEN once in a browser)")


@dataclass(frozen=True)
class ClusterConfig:
    """Where jobs run: worker processes on this machine, or actors on a Ray cluster.

    None of these keys changes a stored frame, so the frame fingerprint leaves the section out
    (`nstd.temporal.plan.fingerprint`) and a stored job survives any change of them; a Ray job
    keeps the unit cut it was first planned with (`nstd.temporal.plan.unit_cut`).
    """

    backend: Literal["local", "ray"] = _opt(
        "local", "local: worker processes here; ray: one Ray actor per GPU of a cluster "
        "(pip install 'nstd[ray]')")
    ray_address: str | None = _opt(
        None, "backend: ray only. null: start or join Ray on this machine; auto or "
        "ray://host:10001: an existing cluster")
    wire_format: Literal["png16", "png8"] = _opt(
        "png16", "backend: ray only. the frames actors send back: png16 (the frame store's "
        "precision) or png8 (what the encoder keeps; ~2.6x fewer bytes at 1080p: "
        "bench/wire_bytes.py)")
    max_unit_frames: int = _opt(
        300, "backend: ray only. a longer shot is split into units of at most this many frames "
        "(a resumed job keeps the cut it started with)", min=1)
    unit_overlap: int = _opt(
        12, "a split unit starts this many frames early (warm-up; remade by the seam pass)",
        min=0)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @classmethod
    def default(cls) -> Config:
        return cls()


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "style": StyleConfig,
    "video": VideoConfig,
    "limits": LimitsConfig,
    "daemon": DaemonConfig,
    "cluster": ClusterConfig,
}
PATH_KEYS = ("inbox", "outbox", "work", "failed", "done", "styles", "state")


# --------------------------------------------------------------------------- parsing


def parse_config(mapping: Mapping[str, Any] | None, base_dir: Path | None = None, *,
                 origins: Mapping[str, str] | None = None,
                 origin: str | None = None) -> Config:
    """Validate a mapping (as loaded from YAML) into a `Config`.

    Every problem is collected and reported together, each with its key path.
    With `base_dir`, relative daemon folders and weight/init paths are resolved against it.
    `origins` maps key paths (``style``, ``style.max_side``) to where they were written (the
    file, ``--set style.max_side=128``, a sidecar); `origin` is where the rest comes from.
    Each problem of the raised `ConfigError` carries the origin of its key path.
    """
    mapping = {} if mapping is None else mapping
    problems: list[str] = []
    if not isinstance(mapping, Mapping):
        raise ConfigError(["the top level must be a mapping of sections"], source=origin)
    for key in mapping:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown section{_suggest(str(key), list(SECTIONS))}")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = mapping.get(name, {})
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(f"{name}: must be a mapping of keys, got {_show(raw)}")
            raw = {}
        sections[name] = _parse_section(name, cls, raw, problems)
    if not problems:
        config = Config(**sections)
        _check_cross_field(config, problems)
    if problems:
        raise ConfigError(problems, source=origin,
                          origins=[origin_of(p, origins or {}) for p in problems])
    return resolve_paths(config, base_dir) if base_dir is not None else config


# Keys that existed once: their own message instead of "unknown key".
RETIRED_KEYS = {
    "video.temporal_weight": "replaced by video.temporal_tolerance (grey levels a reliable "
                             "pixel may move from the warped previous frame, the same at any "
                             "loss scale); remove it",
    "video.long_term": "no longer needed: video.temporal_tolerance holds static regions "
                       "in place; remove it",
}
# Keys that moved to another place: "daemon.cluster: has moved to cluster.backend".
MOVED_KEYS = {
    "daemon.cluster": "cluster.backend",
    "daemon.ray_address": "cluster.ray_address",
    "daemon.wire_format": "cluster.wire_format",
    "video.max_segment_frames": "cluster.max_unit_frames",
    "video.segment_overlap": "cluster.unit_overlap",
}
RETIRED_KEYS.update({old: f"has moved to {new}" for old, new in MOVED_KEYS.items()})


def origin_of(problem: str, origins: Mapping[str, str]) -> str | None:
    """Where the key path a problem starts with (``style.scales[1]: ...``) was written: the
    origin of the longest known prefix of it (``style.scales``, then ``style``)."""
    key = re.sub(r"\[\d+\]", "", problem.split(": ", 1)[0])
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found is not None:
            return found
    return None


def _suggest(name: str, allowed: Sequence[str], prefix: str = "",
             elsewhere: Mapping[str, Sequence[str]] | None = None) -> str:
    """``; did you mean style.max_side?`` for the nearest allowed name (a typo), or the
    section that has this very key; else the list of what is allowed."""
    homes = [section for section, keys in (elsewhere or {}).items() if name in keys]
    if homes:
        return f"; did you mean {homes[0]}.{name}?"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    return f" (allowed: {', '.join(allowed)})"


def _parse_section(name: str, cls: type, raw: Mapping[str, Any], problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key in raw:
        if f"{name}.{key}" in RETIRED_KEYS:
            problems.append(f"{name}.{key}: {RETIRED_KEYS[f'{name}.{key}']}")
        elif key not in fields:
            elsewhere = {section: [f.name for f in dataclasses.fields(other)]
                         for section, other in SECTIONS.items() if section != name}
            problems.append(f"{name}.{key}: unknown key"
                            f"{_suggest(str(key), list(fields), f'{name}.', elsewhere)}")
    for key, f in fields.items():
        if key not in raw:
            continue
        path = f"{name}.{key}"
        before = len(problems)
        value = _convert(path, raw[key], hints[key], problems)
        if len(problems) == before:
            _check_rules(path, value, f.metadata, problems)
        if len(problems) == before:
            values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - fields are all defaulted
        problems.append(f"{name}: {exc}")
        return cls()


def _convert(path: str, value: Any, hint: Any, problems: list[str]) -> Any:
    """Convert a YAML value to the annotated type, or record why it cannot be."""
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for hint_ in inner[:-1]:  # e.g. int | Literal["auto"]: the first that fits
            scratch: list[str] = []
            converted = _convert(path, value, hint_, scratch)
            if not scratch:
                return converted
        return _convert(path, value, inner[-1], problems)
    if origin is Literal:
        if value not in args:
            allowed = " | ".join(str(a) for a in args)
            problems.append(f"{path}: must be one of {allowed}, got {_show(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: must be an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: must be a number, got {_show(value)}")
            return value
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            problems.append(f"{path}: must be a non-empty string, got {_show(value)}")
        return value
    if origin is tuple:
        if args[0] is str and isinstance(value, Sequence) and not isinstance(value, str) \
                and not value:
            return ()  # a list of strings may be empty (daemon.notify_urls: [])
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            problems.append(f"{path}: must be a non-empty list of numbers, got {_show(value)}")
            return value
        items = [_convert(f"{path}[{i}]", v, args[0], problems) for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping) or not value:
            problems.append(f"{path}: must be a non-empty mapping, got {_show(value)}")
            return value
        return {
            str(k): _convert(f"{path}.{k}", v, args[1], problems) for k, v in value.items()
        }
    raise TypeError(f"unsupported config type {hint!r} at {path}")  # a bug, not a user error


def _check_rules(path: str, value: Any, rules: Mapping[str, Any], problems: list[str]) -> None:
    numbers = value.values() if isinstance(value, dict) else (
        value if isinstance(value, tuple) else (value,))
    numbers = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if "min" in rules and any(v < rules["min"] for v in numbers):
        problems.append(f"{path}: must be >= {rules['min']}, got {_show(value)}")
    if "max" in rules and any(v > rules["max"] for v in numbers):
        problems.append(f"{path}: must be <= {rules['max']}, got {_show(value)}")
    if "choices" in rules and value not in rules["choices"]:
        allowed = " | ".join(rules["choices"])
        problems.append(f"{path}: must be one of {allowed}, got {_show(value)}")
    if rules.get("pattern") == "device" and not _is_device(value):
        problems.append(f"{path}: must be auto, cpu, cuda or cuda:N, got {_show(value)}")
    if rules.get("check") == "active_hours":
        problem = check_window(value)
        if problem:
            problems.append(f"{path}: {problem}")
    if rules.get("layer"):
        from nstd.layers import LAYER_NAMES  # local: keeps config importable without torch

        names = list(value) if isinstance(value, dict) else [value]
        for layer in names:
            if layer not in LAYER_NAMES:
                problems.append(
                    f"{path}: unknown VGG-19 layer {_show(layer)} "
                    "(use names like relu4_2, conv3_1, pool2)"
                )


def _is_device(value: str) -> bool:
    if value in ("auto", "cpu", "cuda"):
        return True
    return value.startswith("cuda:") and value[5:].isdigit()


def _check_cross_field(config: Config, problems: list[str]) -> None:
    if (http_problem := check_http(config.daemon.http, config.daemon.http_token)):
        problems.append(http_problem)
    style = config.style
    if list(style.scales) != sorted(style.scales) or style.scales[-1] != 1.0:
        problems.append(
            f"style.scales: must be ascending and end with 1.0, got {list(style.scales)}"
        )
    if any(s <= 0 or s > 1 for s in style.scales):
        problems.append(f"style.scales: each scale must be in (0, 1], got {list(style.scales)}")
    if style.init == "image" and not style.init_image:
        problems.append("style.init_image: must name a file when style.init is 'image'")
    limits = config.limits
    for key in ("iterations", "coarse_iterations"):
        if getattr(style, key) > limits.max_iterations:
            problems.append(f"style.{key}: {getattr(style, key)} is more than "
                            f"limits.max_iterations ({limits.max_iterations})")
    if config.video.frame_iterations > limits.max_frame_iterations:
        problems.append(f"video.frame_iterations: {config.video.frame_iterations} is more "
                        f"than limits.max_frame_iterations ({limits.max_frame_iterations})")
    if all(w == 0 for w in style.style_layers.values()) and style.style_weight > 0:
        problems.append("style.style_layers: at least one layer needs a weight above 0")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_paths(config: Config, base_dir: Path) -> Config:
    """Make relative file and folder paths absolute against `base_dir` (the config's folder)."""

    def absolute(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(os.path.expanduser(p))
        return str(path if path.is_absolute() else (base_dir / path).absolute())

    root = absolute(config.daemon.root) or config.daemon.root
    daemon = dataclasses.replace(config.daemon, root=root, **{
        k: str(Path(root, os.path.expanduser(getattr(config.daemon, k)))) for k in PATH_KEYS})
    model = dataclasses.replace(config.model, weights=absolute(config.model.weights))
    style = dataclasses.replace(config.style, init_image=absolute(config.style.init_image))
    return dataclasses.replace(config, daemon=daemon, model=model, style=style)


def to_mapping(config: Config) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return dict(value)
        return value

    return {
        name: {f.name: plain(getattr(getattr(config, name), f.name))
               for f in dataclasses.fields(SECTIONS[name])}
        for name in SECTIONS
    }

"""The whole job flow, in one place: input file -> stylized output file.

    image:  read (limits checked before decoding) -> resize to style.max_side -> Stylizer.run
            -> write under a temp name in the output folder -> rename (never overwrite)
    video:  see `nstd.temporal.frames` (probe/plan -> per-frame loop with stored frames -> encode)

The CLI (`nstd stylize`) and the daemon both call `run_job`. Nothing here prints: progress
goes out through a callback, and errors are `nstd.errors` classes with one-line messages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from nstd.config import Config
from nstd.engine.stylizer import Progress, StyleTarget, Stylizer
from nstd.errors import InputError, OutputError, UsageError
from nstd.eta import IterationEta
from nstd.job import (
    Heartbeat,
    JobReport,
    JobRequest,
    ProgressCallback,
    StopCheck,
    to_array,
    to_tensor,
)
from nstd.media import container as video
from nstd.media import images
from nstd.progress import JobProgress


def media_kind(path: Path) -> str:
    """'image' or 'video' from the file extension; UsageError for anything else."""
    suffix = path.suffix.lower()
    if suffix in images.IMAGE_EXTENSIONS:
        return "image"
    if suffix in video.VIDEO_EXTENSIONS:
        return "video"
    allowed = sorted(images.IMAGE_EXTENSIONS | video.VIDEO_EXTENSIONS)
    raise UsageError(f"{path.name}: unsupported file type {suffix or '(none)'}; "
                     f"use one of {' '.join(allowed)}")


def default_output(source: Path, styles: Sequence[Path]) -> Path:
    """`<stem>.<style-stem>.<ext>` next to the source (videos always `.mp4`)."""
    style_part = "+".join(s.stem for s in styles)
    suffix = ".mp4" if media_kind(source) == "video" else source.suffix
    return source.with_name(f"{source.stem}.{style_part}{suffix}")


def run_job(
    request: JobRequest,
    stylizer: Stylizer,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    heartbeat: Heartbeat | None = None,
) -> JobReport:
    """Stylize one image or video file as `request` says, and publish the result atomically.

    `progress` gets a `JobProgress` per iteration (image) or per frame (video); `heartbeat` is
    called at least once per optimizer iteration (the daemon pings systemd's watchdog from it);
    `should_stop` is polled per iteration for an image (abandoned: nothing written) and between
    frames for a video (stored frames kept, the next run resumes).
    """
    kind = media_kind(request.source)
    if kind == "video" and media_kind(request.output) != "video":
        raise UsageError(f"{request.output.name}: a video's output must be a video file (.mp4)")
    if kind == "image" and media_kind(request.output) != "image":
        raise UsageError(f"{request.output.name}: an image's output must be an image file")
    if request.output.exists() and not request.overwrite:
        raise OutputError(f"{request.output} exists already; choose another -o or add --overwrite")
    if request.output.resolve() == request.source.resolve():
        raise OutputError(f"{request.output}: the output would replace its own input")
    if not request.output.parent.is_dir():
        raise OutputError(f"{request.output.parent} is not a folder; create it first")
    target = load_style_target(stylizer, request)
    if kind == "image":
        return stylize_image_file(request, stylizer, target, progress, should_stop, heartbeat)
    from nstd.temporal.frames import stylize_video_file  # flow and video imports only when needed

    return stylize_video_file(request, stylizer, target, progress, should_stop, heartbeat)


def load_style_target(stylizer: Stylizer, request: JobRequest) -> StyleTarget:
    """Read the style images and turn them into reusable Gram targets."""
    if not request.styles:
        raise UsageError("no style image given; add --style PATH")
    if len(request.blend) != len(request.styles):
        raise UsageError(f"{len(request.styles)} style images but {len(request.blend)} "
                         "--style-weights; give one weight per style")
    if request.masks and len(request.masks) != len(request.styles):
        raise UsageError(f"{len(request.styles)} style images but {len(request.masks)} style "
                         "masks; give one --style-mask per --style, or none")
    tensors = []
    style = request.config.style
    # The engine never uses a style image larger than style_scale times the output's side.
    style_side = max(16, math.ceil(style.style_scale * style.max_side))
    for path in request.styles:
        try:
            loaded = images.read_image(path, request.config.limits.max_pixels,
                                       max_side=style_side)
        except InputError as exc:
            raise InputError(f"style image {exc}") from None
        tensors.append(to_tensor(loaded.rgb))
    masks = [load_mask(path, request.config) for path in request.masks] or None
    return stylizer.prepare_style(tensors, list(request.blend), masks)


def load_mask(path: Path, config: Config) -> torch.Tensor:
    """A style mask file -> (1, 1, h, w) float32 in [0, 1] (its luminance; white = the style).

    Read no larger than the output needs; a missing or unreadable file is an InputError
    naming it as a style mask.
    """
    try:
        loaded = images.read_image(path, config.limits.max_pixels,
                                   max_side=config.style.max_side)
    except InputError as exc:
        raise InputError(f"style mask {exc}") from None
    rgb = to_tensor(loaded.rgb)  # (1, 3, h, w)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True).clamp(0.0, 1.0)


def stylize_image_file(
    request: JobRequest,
    stylizer: Stylizer,
    target: StyleTarget,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    heartbeat: Heartbeat | None = None,
) -> JobReport:
    # Decoded reduced (JPEG) or shrunk before the float conversion: a huge photo never
    # lives at full size in float32 (nstd.media.images).
    loaded = images.read_image(request.source, request.config.limits.max_pixels,
                               max_side=request.config.style.max_side)
    rgb = images.resize_max_side(loaded.rgb, request.config.style.max_side)
    alpha = None
    if loaded.alpha is not None:
        alpha = images.resize_max_side(loaded.alpha[..., None], request.config.style.max_side)[
            ..., 0]
    content = to_tensor(rgb)
    started = time.monotonic()
    result = stylizer.run(
        content,
        target,
        init=load_init_image(request.config, content.shape[-2:]),
        progress=_iteration_progress(progress, started, heartbeat, IterationEta(
            stylizer.plan(tuple(content.shape[-2:]), request.config.style.iterations))),
        should_stop=should_stop,
    )
    if progress is not None:
        # The closing line carries the result's own figure: after early stopping (or with
        # preserve_color's recombination) the last iteration's line would not be it.
        progress(JobProgress(done=result.iterations, total=result.iterations, unit="iteration",
                             elapsed=time.monotonic() - started, loss=result.final_loss,
                             detail="done", remaining=0.0, modelled=True))
    images.write_image(request.output, to_array(result.image), alpha=alpha,
                       overwrite=request.overwrite)
    height, width = rgb.shape[:2]
    return JobReport(
        kind="image",
        output=request.output,
        seconds=result.seconds,
        iterations=result.iterations,
        initial_loss=result.initial_loss,
        final_loss=result.final_loss,
        losses=result.losses,
        width=width,
        height=height,
        device=str(stylizer.device),
        extra={"stopped_early": result.stopped_early},
    )


def load_init_image(config: Config, size: torch.Size) -> torch.Tensor | None:
    """The configured start image (`style.init: image`), resized to the output; else None."""
    if config.style.init != "image" or not config.style.init_image:
        return None
    loaded = images.read_image(Path(config.style.init_image), config.limits.max_pixels)
    tensor = to_tensor(loaded.rgb)
    return torch.nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear",
                                           align_corners=False).clamp(0, 1)


def _iteration_progress(progress: ProgressCallback | None, started: float,
                        heartbeat: Heartbeat | None,
                        eta: IterationEta) -> Callable[[Progress], None] | None:
    """Adapt the engine's per-iteration progress to the job-level callback, with the ETA of
    `eta` (the time per iteration measured at the current scale)."""
    if progress is None and heartbeat is None:
        return None

    def report(p: Progress) -> None:
        if heartbeat is not None:
            heartbeat()
        if progress is None:
            return
        now = time.monotonic()
        progress(JobProgress(done=p.iteration, total=p.total, unit="iteration",
                             elapsed=now - started, loss=p.loss,
                             detail=f"scale {p.scale_index + 1}/{p.scale_count} "
                                    f"{p.size[1]}x{p.size[0]}",
                             remaining=eta.update(p.iteration, p.scale_index, now),
                             modelled=True))

    return report

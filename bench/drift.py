"""Long-clip drift: does a video's quality hold over a whole film, and does recurring content
keep its rendering?

    python bench/drift.py                                   # 1000 frames at 40 px, ~15 min
    python bench/drift.py --frames 1200 --max-side 64 --clip recurring --json drift.json
    python bench/drift.py --mode "before:video.temporal_weight=50"   # other settings

Clips (`nstd.testing.clips`): `recurring` (a 120-frame pan with an object crossing, played
forward and backward: every source frame returns every 238 frames, one shot), `static`
(a fixed camera: noise and a slow small object), `pan` (one long slow pan), `cuts` (a cut
to another scene every quarter). For each mode the clip is stylized by nstd's video job,
then every output frame (as encoded) is scored with the engine's loss against its source
frame (`Stylizer.evaluate`, the same content+style+tv as the job's frame loss), and it prints:

- the mean frame loss of the first and of the last 10 % of frames, and their ratio (the bar:
  <= 1.1);
- the loss per tenth of the clip (the curve);
- recurring clip: per pass over the source frames, the mean absolute difference (grey levels,
  0-255) between each frame's rendering and its first rendering (the bar: a plateau, not
  growth).

Without --weights: full-width VGG-19 with random weights (stability and loss, not looks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout

from nstd.config import parse_config  # noqa: E402
from nstd.config_files import apply_override  # noqa: E402
from nstd.engine.stylizer import build_stylizer  # noqa: E402
from nstd.job import JobRequest, to_tensor  # noqa: E402
from nstd.media import container as video  # noqa: E402
from nstd.pipeline import load_style_target, run_job  # noqa: E402
from nstd.temporal.plan import output_size  # noqa: E402
from nstd.testing.clips import recurring_order, write_recurring_clip, write_scene_clip  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PERIOD = 120


def say(text: str) -> None:
    print(text, flush=True)


def frames_of(path: Path, limits: Any, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    import cv2

    out = []
    for frame in video.iter_frames(path, video.probe_video(path, limits)):
        rgb = frame.rgb
        if size is not None and (rgb.shape[1], rgb.shape[0]) != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        out.append(rgb)
    return out


def scores(stylizer: Any, target: Any, sources: list[np.ndarray], outputs: list[np.ndarray]
           ) -> list[float]:
    """Each output frame's total loss against its source frame."""
    return [stylizer.evaluate(to_tensor(o), to_tensor(s), target)["total"]
            for s, o in zip(sources, outputs, strict=True)]


def recurrence(outputs: list[np.ndarray], order: list[int], period: int) -> list[float]:
    """Per pass over the source frames: mean |O_i - first rendering of its source frame|."""
    first: dict[int, np.ndarray] = {}
    passes: dict[int, list[float]] = {}
    for i, (rgb, src) in enumerate(zip(outputs, order, strict=True)):
        frame = rgb.astype(np.float32)
        if src not in first:
            first[src] = frame
            continue
        passes.setdefault(i // (period - 1), []).append(float(np.abs(frame - first[src]).mean()))
    return [float(np.mean(v)) for _, v in sorted(passes.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="recurring",
                        choices=("recurring", "static", "pan", "cuts"))
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--max-side", type=int, default=40)
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "mosaic.png")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--mode", action="append", default=[],
                        metavar="NAME:SECTION.KEY=VALUE,...", help="default: the shipped settings")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "drift")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.weights
    if weights is None:
        from nstd.testing.weights import random_vgg19_file

        weights = random_vgg19_file(args.out)
    side = args.max_side
    clip_size = (side * 3 // 2 // 2 * 2, side * 9 // 8 // 2 * 2)
    clip = args.out / f"{args.clip}-{args.frames}-{side}.mp4"
    if not clip.exists():
        if args.clip == "recurring":
            write_recurring_clip(clip, args.frames, clip_size, period=PERIOD)
        else:
            motion = {"static": "static", "pan": "pan", "cuts": "cuts"}[args.clip]
            write_scene_clip(clip, motion, args.frames, clip_size)
    modes = {}
    for spec in args.mode or ["default:"]:
        name, _, keys = spec.partition(":")
        modes[name] = [k for k in keys.split(",") if k]
    results: dict[str, Any] = {"benchmark": "nstd long-clip drift",
                               "date": time.strftime("%Y-%m-%d"),
                               "command": " ".join(["bench/drift.py",
                                                    *(argv if argv is not None else sys.argv[1:])]),
                               "weights": "random full-width VGG-19" if args.weights is None
                               else str(args.weights), "clip": args.clip,
                               "frames": args.frames, "max_side": side, "modes": {}}
    for name, keys in modes.items():
        mapping: dict[str, Any] = {}
        for assignment in [*args.set, *keys]:
            apply_override(mapping, assignment)
        mapping.setdefault("model", {}).update({"weights": str(weights), "device": "cpu"})
        mapping.setdefault("style", {}).update({"max_side": side})
        mapping["style"].setdefault("iterations", 100)
        mapping["style"].setdefault("coarse_iterations", 50)
        config = parse_config(mapping)
        stylizer = build_stylizer(config.model, config.style)
        out = args.out / f"{args.clip}-{name}.mp4"
        request = JobRequest(source=clip, output=out, styles=(args.style,), blend=(1.0,),
                             config=config, overwrite=True, work_dir=out.with_suffix(".work"),
                             restart=True)
        started = time.perf_counter()
        report = run_job(request, stylizer)
        seconds = time.perf_counter() - started
        info = video.probe_video(clip, config.limits)
        size = output_size(info.width, info.height, side)
        outputs = frames_of(out, config.limits)
        sources = frames_of(clip, config.limits, size)
        losses = scores(stylizer, load_style_target(stylizer, request), sources, outputs)
        tenth = max(1, len(losses) // 10)
        first, last = float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))
        curve = [float(np.mean(losses[i * tenth:(i + 1) * tenth])) for i in range(10)]
        row: dict[str, Any] = {
            "settings": keys, "seconds": seconds,
            "evaluations_per_frame": report.iterations / len(outputs),
            "loss_first_10pct": first, "loss_last_10pct": last, "last_over_first": last / first,
            "loss_per_tenth": curve}
        if args.clip == "recurring":
            row["recurrence_grey_levels_per_pass"] = recurrence(
                outputs, recurring_order(len(outputs), PERIOD), PERIOD)
        results["modes"][name] = row
        say(f"{name}: loss first 10% {first:.4g}, last 10% {last:.4g} ({last / first:.3f}x); "
            f"{row['evaluations_per_frame']:.1f} evaluations/frame, {seconds:.0f} s")
        say("  loss per tenth: " + " ".join(f"{v:.4g}" for v in curve))
        if "recurrence_grey_levels_per_pass" in row:
            say("  recurrence (grey levels) per pass: " + " ".join(
                f"{v:.1f}" for v in row["recurrence_grey_levels_per_pass"]))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

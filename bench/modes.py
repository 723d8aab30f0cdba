"""The video panel: nstd's video defaults against independent frames, per clip and size.

    python bench/modes.py                                  # 6 clips x 64 px, 24 frames each
    python bench/modes.py --sizes 64,128 --clips pan,fast --frames 24 --json out.json
    python bench/modes.py --mode "independent:video.init=content,video.temporal_tolerance=null"

Clips: `nstd.testing.clips` (a camera over a photo-like world with an object moving in
front: static, pan, zoom, fast, fade, cuts; noise and H.264 like a camera file), made at 1.5x
the stylized size. Each clip is stylized by nstd's video job once per mode:

  independent  video.init=content, video.temporal_tolerance=null: every frame a cold start
  default      the shipped video settings

and the table gives, per clip and size: E_warp of the encoded output (`nstd eval-temporal`'s
figure, with the pairs across the clip's hard cuts left out) beside the source's own, mean
frame loss (content+style+tv of each frame, the job's own figure) and network evaluations per
frame, and four bars for the default:
E_warp <= 0.1x independent, loss <= 1.0x independent, E_warp <= 1.3x the source's, and at most
1/3 of independent frames' evaluations. `--mode NAME:KEY=VALUE,...` replaces the modes (e.g.
an older release's keys); `--reuse earlier.json` takes the rows of modes not run now from an
earlier run on the same clips (the independent baseline, which no video setting changes).
Cold frames use style.iterations=100 and style.coarse_iterations=50
unless --set says otherwise. Without --weights: full-width VGG-19 with random weights, so the
figures are about stability, loss and cost, never about how the pictures look.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout

from nstd.config import parse_config  # noqa: E402
from nstd.config_files import apply_override  # noqa: E402
from nstd.engine.stylizer import build_stylizer  # noqa: E402
from nstd.job import JobRequest  # noqa: E402
from nstd.pipeline import run_job  # noqa: E402
from nstd.temporal.ewarp import evaluate_videos  # noqa: E402
from nstd.testing.clips import MOTIONS, hard_cuts, write_scene_clip  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODES = {
    "independent": ["video.init=content", "video.temporal_tolerance=null"],
    "default": [],
}
RANDOM_WEIGHTS_NOTE = ("full-width VGG-19 with random weights: figures about stability, loss "
                       "and cost only, not visual quality")


def say(text: str) -> None:
    print(text, flush=True)


def parse_modes(specs: list[str]) -> dict[str, list[str]]:
    """--mode NAME:KEY=VALUE,KEY=VALUE -> {NAME: [KEY=VALUE, ...]}."""
    if not specs:
        return dict(DEFAULT_MODES)
    modes = {}
    for spec in specs:
        name, _, keys = spec.partition(":")
        modes[name] = [k for k in keys.split(",") if k]
    return modes


def run_mode(clip: Path, out: Path, style: Path, mapping: dict[str, Any], stylizer: Any,
             new_shots: list[int]) -> dict[str, Any]:
    config = parse_config(mapping)
    started = time.perf_counter()
    report = run_job(JobRequest(source=clip, output=out, styles=(style,), blend=(1.0,),
                                config=config, overwrite=True, work_dir=out.with_suffix(".work"),
                                restart=True), stylizer)
    seconds = time.perf_counter() - started
    temporal = evaluate_videos(clip, out, new_shots)  # pairs across the clip's cuts left out
    frames = report.extra["frames"]
    row = {"ewarp": temporal["ewarp"], "source_ewarp": temporal["source_ewarp"],
           "mean_frame_loss": report.extra["mean_frame_loss"],
           "evaluations_per_frame": report.iterations / frames,
           "seconds_per_frame": seconds / frames, "frames": frames,
           "cold_frames": report.extra.get("cold_frames"),
           "pairs_across_cuts_left_out": temporal["pairs_across_cuts"]}
    if "per_frame" in report.extra:
        row["per_frame"] = report.extra["per_frame"]
    return row


def bars(ind: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    ratios = {
        "ewarp_vs_independent": default["ewarp"] / ind["ewarp"],
        "loss_vs_independent": default["mean_frame_loss"] / ind["mean_frame_loss"],
        "ewarp_vs_source": default["ewarp"] / max(default["source_ewarp"], 1e-12),
        "evaluations_vs_independent": default["evaluations_per_frame"]
        / ind["evaluations_per_frame"],
    }
    ratios["met"] = {
        "ewarp<=0.1x_independent": ratios["ewarp_vs_independent"] <= 0.1,
        "loss<=1.0x_independent": ratios["loss_vs_independent"] <= 1.0,
        "ewarp<=1.3x_source": ratios["ewarp_vs_source"] <= 1.3,
        "evaluations<=1/3": ratios["evaluations_vs_independent"] <= 1 / 3,
    }
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=",".join(MOTIONS))
    parser.add_argument("--sizes", default="64", help="stylized longest sides, e.g. 64,128,256")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "mosaic.png")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--mode", action="append", default=[],
                        metavar="NAME:SECTION.KEY=VALUE,...")
    parser.add_argument("--reuse", type=Path, help="rows of other modes from an earlier --json")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "modes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.weights
    if weights is None:
        from nstd.testing.weights import random_vgg19_file

        weights = random_vgg19_file(args.out)
        say(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    modes = parse_modes(args.mode)
    results: dict[str, Any] = {
        "benchmark": "nstd video panel", "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["bench/modes.py", *(argv if argv is not None else sys.argv[1:])]),
        "weights": RANDOM_WEIGHTS_NOTE if args.weights is None else str(args.weights),
        "modes": modes, "rows": {}}
    earlier = json.loads(args.reuse.read_text())["rows"] if args.reuse else {}
    stylizer = None
    for size in (int(s) for s in args.sizes.split(",")):
        for motion in args.clips.split(","):
            clip_size = (size * 3 // 2 // 2 * 2, size * 9 // 8 // 2 * 2)  # 4:3, 1.5x
            clip = args.out / f"{motion}-{size}.mp4"
            if not clip.exists():
                write_scene_clip(clip, motion, args.frames, clip_size)
            key = f"{motion}@{size}"
            rows: dict[str, Any] = {name: row for name, row in earlier.get(key, {}).items()
                                    if name not in modes and name != "bars"}
            for name, keys in modes.items():
                mapping: dict[str, Any] = {}
                for assignment in [*args.set, *keys]:
                    apply_override(mapping, assignment)
                mapping.setdefault("model", {}).update({"weights": str(weights),
                                                        "device": args.device})
                style = mapping.setdefault("style", {})
                style["max_side"] = size
                style.setdefault("iterations", 100)
                style.setdefault("coarse_iterations", 50)
                config = parse_config(mapping)
                if stylizer is None or stylizer.style != config.style:  # a mode may change it
                    stylizer = build_stylizer(config.model, config.style)
                rows[name] = run_mode(clip, args.out / f"{key}-{name}.mp4", args.style,
                                      mapping, stylizer, hard_cuts(motion, args.frames))
                shown = {k: v for k, v in rows[name].items() if k != "per_frame"}
                say(f"{key} {name}: {json.dumps(shown)}")
            if "independent" in rows and "default" in rows:
                rows["bars"] = bars(rows["independent"], rows["default"])
                say(f"{key} bars: {json.dumps(rows['bars'])}")
            results["rows"][key] = rows
            if args.json:
                args.json.write_text(json.dumps(results, indent=1) + "\n")
    say("")
    say(f"{'clip@size':14}{'mode':13}{'E_warp':>10}{'source':>10}{'loss':>11}{'eval/fr':>9}"
        f"{'E/ind':>7}{'L/ind':>7}{'E/src':>7}{'ev/ind':>7}")
    for key, rows in results["rows"].items():
        for name, row in rows.items():
            if name == "bars":
                continue
            b = rows.get("bars", {}) if name == "default" else {}
            extra = "".join(f"{b[k]:7.3f}" for k in ("ewarp_vs_independent",
                                                      "loss_vs_independent", "ewarp_vs_source",
                                                      "evaluations_vs_independent")) if b else ""
            say(f"{key:14}{name:13}{row['ewarp']:10.2e}{row['source_ewarp']:10.2e}"
                f"{row['mean_frame_loss']:11.4g}{row['evaluations_per_frame']:9.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

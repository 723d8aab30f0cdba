"""Issue 3's stability table: nstd's video modes side by side on one clip.

    python bench/modes.py                       # 24 frames at 96 px, CPU, ~4-5 min
    python bench/modes.py --video clip.mp4 --weights vgg19.pth --max-side 256 --frames 48

Runs nstd's video job three times with its defaults except:
  independent  video.init=content, video.temporal_weight=0 (every frame a cold start)
  previous     video.init=previous, video.temporal_weight=0 (start from the unwarped t-1)
  warped       the defaults (warped start + temporal loss, short warm budget)
and reports for each: E_warp of the encoded video (`nstd eval-temporal`'s figure),
mean_frame_loss (the job's own figure: content+style+tv of each frame without the temporal
term, as the engine returned it), iterations and seconds per frame; plus the targets of issue 3
for the default: E_warp <= 1/5 of independent, mean_frame_loss at most 10 % above it.
--cold-iterations (style.iterations) as in bench/compare.py, for the same reason.
--warm-budgets 5,10,20 adds a warped run per video.frame_iterations value (`warped@N`): the
table that tunes the shipped warm budget. --modes picks which of the three to run.
Without --weights: random full-width weights (figures about stability and loss only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (compare)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout

from compare import DEFAULT_STYLE, RANDOM_WEIGHTS_NOTE, prepare_clip, say  # noqa: E402

from nstd.config import apply_override, parse_config  # noqa: E402
from nstd.engine.stylizer import build_stylizer  # noqa: E402
from nstd.job import JobRequest  # noqa: E402
from nstd.pipeline import run_job  # noqa: E402
from nstd.temporal.ewarp import evaluate_videos  # noqa: E402

MODES = {
    "independent": {"init": "content", "temporal_weight": 0.0},
    "previous": {"init": "previous", "temporal_weight": 0.0},
    "warped": {},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path)
    parser.add_argument("--style", type=Path, default=DEFAULT_STYLE)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-side", type=int, default=96)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--clip-size", default="192x144")
    parser.add_argument("--cold-iterations", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES))
    parser.add_argument("--warm-budgets", default="",
                        help="video.frame_iterations values for extra warped runs, e.g. 5,10,20")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out"
                        / "modes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = args.weights
    if weights is None:
        from nstd.testing.weights import random_vgg19_file

        weights = random_vgg19_file(out)
        say(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    cw, _, ch = args.clip_size.lower().partition("x")
    clip = prepare_clip(args.video, args.frames, out, (int(cw), int(ch or cw)))
    rows: dict[str, Any] = {}
    stylizer = None
    runs = {name: MODES[name] for name in args.modes.split(",")}
    for budget in filter(None, args.warm_budgets.split(",")):
        runs[f"warped@{budget}"] = {"frame_iterations": int(budget)}
    for name, video_keys in runs.items():
        mapping: dict[str, Any] = {}
        for assignment in args.set:
            apply_override(mapping, assignment)
        mapping.setdefault("model", {}).update({"weights": str(weights), "device": args.device})
        mapping.setdefault("style", {}).update({"max_side": args.max_side,
                                                "iterations": args.cold_iterations})
        mapping.setdefault("video", {}).update(video_keys)
        config = parse_config(mapping)
        if stylizer is None:  # one network for all three (the loss settings are shared)
            stylizer = build_stylizer(config.model, config.style)
        output = out / f"{name}.mp4"
        output.unlink(missing_ok=True)
        say(f"{name} ...")
        started = time.perf_counter()
        report = run_job(JobRequest(source=clip, output=output, styles=(args.style,),
                                    blend=(1.0,), config=config, overwrite=True,
                                    work_dir=out / f"{name}-work", restart=True), stylizer)
        seconds = time.perf_counter() - started
        temporal = evaluate_videos(clip, output)
        frames = report.extra["frames"]
        rows[name] = {"ewarp": temporal["ewarp"], "source_ewarp": temporal["source_ewarp"],
                      "mean_frame_loss": report.extra["mean_frame_loss"],
                      "iterations_per_frame": report.iterations / frames,
                      "seconds_per_frame": seconds / frames, "frames": frames}
        say(f"  {json.dumps(rows[name])}")
    ind, warped = rows.get("independent"), rows.get("warped")
    ratios = {}
    if ind and warped:
        ratios = {"ewarp_warped_over_independent": warped["ewarp"] / ind["ewarp"],
                  "loss_warped_over_independent": warped["mean_frame_loss"]
                  / ind["mean_frame_loss"]}
    if ind:
        for name, row in rows.items():
            if name.startswith("warped@"):
                row["ewarp_over_independent"] = row["ewarp"] / ind["ewarp"]
                row["loss_over_independent"] = row["mean_frame_loss"] / ind["mean_frame_loss"]
    report = {
        "benchmark": "nstd video modes (issue 3)",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "device": str(stylizer.device) if stylizer else args.device,
        "weights": RANDOM_WEIGHTS_NOTE if args.weights is None else str(args.weights),
        "cold_iterations": args.cold_iterations,
        "modes": rows,
        "ratios": ratios,
        "targets": {"ewarp_at_most_one_fifth": ratios["ewarp_warped_over_independent"] <= 0.2,
                    "loss_within_10_percent": ratios["loss_warped_over_independent"] <= 1.1}
        if ratios else {},
    }
    json_path = args.json or out / "modes.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'mode':14}{'E_warp':>10}{'mean_frame_loss':>17}{'iter/frame':>12}{'s/frame':>10}")
    for name, row in rows.items():
        print(f"{name:14}{row['ewarp']:10.5f}{row['mean_frame_loss']:17.4g}"
              f"{row['iterations_per_frame']:12.1f}{row['seconds_per_frame']:10.2f}")
    if ratios:
        print(f"source E_warp {ind['source_ewarp']:.5f}; warped/independent: E_warp "
              f"{ratios['ewarp_warped_over_independent']:.3f} (target <= 0.2), loss "
              f"{ratios['loss_warped_over_independent']:.3f} (target <= 1.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Long-term drift of static regions: how far frame t wanders from frame 1 where nothing moves.

A known complaint about warm-started video style transfer is that static backgrounds slowly
"boil": every frame is re-optimized from the previous one, and small changes accumulate.
This benchmark stylizes a clip whose background is static (the `static` test pattern, or a
given video) with `video.long_term` off and on, and prints the mean absolute difference
(0-255 scale) between each output frame and the first one, at a few frame indices.

    python bench/drift.py --frames 30 --max-side 64 [--weights W] [--json out.json]

Without --weights, random full-width VGG-19 weights are written to a temp folder: the figures
then describe stability of the optimization, not visual quality.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from nstd.config import parse_config
from nstd.engine.stylizer import build_stylizer
from nstd.job import JobRequest
from nstd.media import container as video
from nstd.pipeline import run_job
from nstd.testing.media import write_test_clip
from nstd.testing.weights import random_vgg19_file

REPO = Path(__file__).resolve().parent.parent


def drift_curve(path: Path, limits) -> list[float]:
    """Mean |O_t - O_0| in grey levels for every frame t of a video."""
    frames = video.iter_frames(path, video.probe_video(path, limits))
    first = None
    curve = []
    for frame in frames:
        rgb = frame.rgb.astype(np.float32)
        first = rgb if first is None else first
        curve.append(float(np.abs(rgb - first).mean()))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="clip with a static background "
                        "(default: a synthetic static texture)")
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "mosaic.png")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--max-side", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nstd-drift-"))
    weights = args.weights or random_vgg19_file(work)
    clip = args.video or write_test_clip(work / "static.mp4", frames=args.frames,
                                         size=(args.max_side * 4 // 3, args.max_side),
                                         pattern="static")
    results = {"weights": "given" if args.weights else "random (no visual-quality claim)",
               "frames": args.frames, "max_side": args.max_side}
    limits = parse_config({}).limits
    source_curve = drift_curve(clip, limits)
    results["source_drift_at_last_frame"] = round(source_curve[-1], 3)
    print(f"source itself: drift at t={len(source_curve) - 1}: {source_curve[-1]:.2f}")
    for long_term in (False, True):
        config = parse_config({
            "model": {"weights": str(weights), "device": args.device},
            "style": {"max_side": args.max_side},
            "video": {"long_term": long_term},
        })
        out = work / f"long_term_{long_term}.mp4"
        request = JobRequest(source=clip, output=out, styles=(args.style,), blend=(1.0,),
                             config=config)
        report = run_job(request, build_stylizer(config.model, config.style))
        curve = drift_curve(out, config.limits)
        picks = sorted({1, len(curve) // 2, len(curve) - 1})
        results[f"long_term={long_term}"] = {
            "drift_at_frame": {str(i): round(curve[i], 3) for i in picks},
            "mean_frame_loss": report.extra["mean_frame_loss"],
        }
        print(f"long_term={long_term!s:5}  drift vs frame 0 (grey levels): "
              + "  ".join(f"t={i}: {curve[i]:.2f}" for i in picks)
              + f"  mean_frame_loss {report.extra['mean_frame_loss']:.4g}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

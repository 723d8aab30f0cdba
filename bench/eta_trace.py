"""The ETA nstd shows at each frame (video) or iteration (image) against the real remaining time.

    python bench/eta_trace.py --frames 24 --size 128x96                       # a video
    python bench/eta_trace.py --image --size 128x96                           # a photo
    python bench/eta_trace.py --frames 24 --size 128x96 --cut-at 12 --json eta.json

The input is synthetic (a moving texture, nstd.testing.media; ``--cut-at N``: a hard cut, so
frame N starts a second shot cold), stylized at its own size with the "first try on a CPU"
settings of the README (style.iterations 100, style.coarse_iterations 50; override with
--set). Each progress report's ETA (None = "ETA unknown") is set beside the time the job
really still took from that report on, measured on this machine. Without --weights the
network is a random full-width VGG-19 (the real one's cost; the pictures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.config import parse_config  # noqa: E402
from nstd.config_files import apply_override  # noqa: E402
from nstd.engine.stylizer import build_stylizer  # noqa: E402
from nstd.job import JobRequest  # noqa: E402
from nstd.pipeline import run_job  # noqa: E402
from nstd.progress import JobProgress  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIRST_TRY = ("style.iterations=100", "style.coarse_iterations=50")


def trace(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from nstd.testing.media import write_test_clip, write_test_image
    from nstd.testing.weights import random_vgg19_file

    w, _, h = args.size.lower().partition("x")
    size = (int(w), int(h or w))
    mapping: dict[str, Any] = {}
    for assignment in (*FIRST_TRY, *args.set):
        apply_override(mapping, assignment)
    weights = args.weights or random_vgg19_file(folder)
    mapping.setdefault("model", {}).update({"weights": str(weights), "device": args.device})
    mapping.setdefault("style", {}).setdefault("max_side", max(size))
    config = parse_config(mapping)
    if args.image:
        source = write_test_image(folder / "photo.png", size=size, seed=1)
        output = folder / "out.png"
    else:
        source = write_test_clip(folder / "clip.mp4", frames=args.frames, size=size,
                                 cut_at=args.cut_at)
        output = folder / "out.mp4"
    stylizer = build_stylizer(config.model, config.style)
    seen: list[tuple[JobProgress, float]] = []

    def progress(p: JobProgress) -> None:
        if p.unit in ("frame", "iteration"):  # not the plan pass, nor the encoder's tail
            seen.append((p, time.monotonic()))

    started = time.monotonic()
    run_job(JobRequest(source=source, output=output, styles=(args.style,), blend=(1.0,),
                       config=config, work_dir=folder / "work"), stylizer, progress=progress)
    end = seen[-1][1]
    rows = [{"done": p.done, "total": p.total, "mode": p.detail,
             "eta_seconds": None if p.eta is None else round(p.eta, 2),
             "real_remaining_seconds": round(end - at, 2),
             "ratio": round(p.eta / (end - at), 2) if p.eta is not None and end > at else None}
            for p, at in seen]
    return {"kind": "image" if args.image else "video", "size": list(size),
            "device": str(stylizer.device), "seconds": round(end - started, 2), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="128x96", help="WxH of the synthetic input")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--cut-at", type=int, help="a hard cut before this frame")
    parser.add_argument("--image", action="store_true", help="a photo instead of a video")
    parser.add_argument("--every", type=int, default=10,
                        help="print every Nth iteration of an image (default 10)")
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "mosaic.png")
    parser.add_argument("--weights", help="VGG-19 state dict (default: random full-width)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--json", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nstd-eta-") as folder:
        result = trace(args, Path(folder))
    result.update(date=time.strftime("%Y-%m-%d"), cpu_threads=torch.get_num_threads(),
                  machine=platform.machine(),
                  weights=args.weights or "random full-width VGG-19 (timing only)")
    unit = "iteration" if args.image else "frame"
    print(f"{unit:>9}  {'mode':<16} {'ETA shown':>10} {'real left':>10}  ratio")
    for row in result["rows"]:
        if args.image and row["done"] % args.every and row["done"] != row["total"]:
            continue
        eta = "unknown" if row["eta_seconds"] is None else f"{row['eta_seconds']:.1f} s"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{row['done']:>4}/{row['total']:<4}  {row['mode'][:16]:<16} {eta:>10} "
              f"{row['real_remaining_seconds']:>8.1f} s  {ratio}")
    print(f"{result['kind']} {result['size'][0]}x{result['size'][1]} on {result['device']}: "
          f"{result['seconds']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU memory (RSS) of a video job over the length of a video: it must stay flat.

    python bench/video_memory.py                             # 720p, 120 frames, ~2-3 min on 2 cores
    python bench/video_memory.py --size 64x48 --frames 300   # a long tiny clip
    python bench/video_memory.py --json bench/out/memory.json

Runs nstd's video job (decode thread, flow thread, store+encode thread, frame history, stored
frames) on a synthetic moving-texture clip and samples the process RSS after every frame.
Memory is about the pipeline, not the network's arithmetic, so by default the network is the
slim random VGG-19 (1/8 of the channels, nstd.testing.weights) and the budgets are tiny
(2 cold, 1 warm iteration): the frames still go through every stage at full size.
Prints RSS at the start (after the first frame), at 25/50/75 %, at the end, the peak, and the
growth over the second half of the video in MiB per 100 frames (flat: about 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.config import parse_config  # noqa: E402
from nstd.config_files import apply_override  # noqa: E402
from nstd.engine.stylizer import build_stylizer  # noqa: E402
from nstd.job import JobRequest  # noqa: E402
from nstd.pipeline import run_job  # noqa: E402
from nstd.progress import JobProgress  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720", help="WxH of the synthetic clip")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--weights", help="VGG-19 state dict (default: slim random)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides (after the defaults of this benchmark)")
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "mosaic.png")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from nstd.testing.media import write_test_clip
    from nstd.testing.weights import write_random_vgg19

    w, _, h = args.size.lower().partition("x")
    size = (int(w), int(h or w))
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="nstd-memory-") as name:
        folder = Path(name)
        weights = args.weights or write_random_vgg19(folder / "slim.pth", width_divisor=8)
        clip = write_test_clip(folder / "clip.mp4", frames=args.frames, size=size)
        mapping: dict[str, Any] = {
            "model": {"weights": str(weights), "device": "cpu"},
            "style": {"max_side": max(size), "iterations": 2, "coarse_iterations": 1},
            "video": {"frame_iterations": 1, "preset": "ultrafast"},
        }
        for assignment in args.set:
            apply_override(mapping, assignment)
        config = parse_config(mapping)
        stylizer = build_stylizer(config.model, config.style)
        before = rss_mb()

        def progress(p: JobProgress) -> None:
            samples.append((p.done, rss_mb()))

        started = time.perf_counter()
        run_job(JobRequest(source=clip, output=folder / "out.mp4", styles=(args.style,),
                           blend=(1.0,), config=config, work_dir=folder / "work"),
                stylizer, progress=progress)
        seconds = time.perf_counter() - started
    frames = [f for f, _ in samples]
    rss = [r for _, r in samples]

    def at(fraction: float) -> float:
        return rss[min(len(rss) - 1, int(fraction * (len(rss) - 1)))]

    half = len(rss) // 2
    slope = float(np.polyfit(frames[half:], rss[half:], 1)[0]) * 100 if len(rss) - half >= 2 \
        else 0.0
    report = {
        "benchmark": "CPU RSS over a video job",
        "date": time.strftime("%Y-%m-%d"),
        "clip": {"width": size[0], "height": size[1], "frames": args.frames},
        "weights": args.weights or "slim random VGG-19 (1/8 channels): memory of the pipeline",
        "seconds": round(seconds, 1),
        "rss_mb": {"before_job": round(before, 1), "first_frame": round(rss[0], 1),
                   "25%": round(at(0.25), 1), "50%": round(at(0.5), 1),
                   "75%": round(at(0.75), 1), "end": round(rss[-1], 1),
                   "peak": round(max(rss), 1)},
        "growth_mb_per_100_frames_second_half": round(slope, 2),
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    r = report["rss_mb"]
    print(f"{size[0]}x{size[1]}, {args.frames} frames, {seconds:.0f} s: RSS MiB first frame "
          f"{r['first_frame']}, 25% {r['25%']}, 50% {r['50%']}, 75% {r['75%']}, end {r['end']}, "
          f"peak {r['peak']}; growth over the second half "
          f"{report['growth_mb_per_100_frames_second_half']} MiB/100 frames", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

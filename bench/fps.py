"""End-to-end frames per second of nstd's video job (decode, flow, stylize, store, encode).

    python bench/fps.py --device cuda --size 1024x576 --frames 48 --precision fp32,bf16
    python bench/fps.py --device cpu --size 96x72 --frames 8 --set style.iterations=20

The clip is a synthetic moving texture (nstd.testing.media) at --size, stylized at that size
(style.max_side = its longest side) with nstd's defaults otherwise: the default warm budget
(video.frame_iterations) and a cold first frame (style.iterations, coarse-to-fine).
Reported: `fps` over the whole job, and `warm_fps`, the steady rate over the warm frames
(between the first and the last frame finishing), which is what a long video converges to.
Without --weights the network has random full-width weights (same cost as the real one; the
images mean nothing).
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

from nstd.config import parse_config, to_mapping  # noqa: E402
from nstd.config_files import apply_override  # noqa: E402
from nstd.engine.stylizer import build_stylizer  # noqa: E402
from nstd.job import JobRequest  # noqa: E402
from nstd.pipeline import run_job  # noqa: E402
from nstd.progress import JobProgress  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(args: argparse.Namespace, folder: Path, precision: str | None) -> dict[str, Any]:
    from nstd.testing.media import write_test_clip
    from nstd.testing.weights import random_vgg19_file

    w, h = parse_size(args.size)
    weights = args.weights or random_vgg19_file(folder)
    clip = folder / "clip.mp4"
    if not clip.exists():
        write_test_clip(clip, frames=args.frames, size=(w, h))
    mapping: dict[str, Any] = {}
    for assignment in args.set:
        apply_override(mapping, assignment)
    mapping.setdefault("model", {}).update({"weights": str(weights), "device": args.device})
    if precision:
        mapping["model"]["precision"] = precision
    mapping.setdefault("style", {}).setdefault("max_side", max(w, h))
    config = parse_config(mapping)
    stylizer = build_stylizer(config.model, config.style)
    style = args.style
    done: list[tuple[float, str]] = []

    def progress(p: JobProgress) -> None:
        done.append((time.perf_counter(), p.detail or ""))

    if stylizer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(stylizer.device)
    request = JobRequest(source=clip, output=folder / "out.mp4", styles=(style,), blend=(1.0,),
                         config=config, overwrite=True, work_dir=folder / "work", restart=True)
    started = time.perf_counter()
    report = run_job(request, stylizer, progress=progress)
    seconds = time.perf_counter() - started
    # Steady rate: frames 2..n over the time from frame 1 finishing to frame n finishing.
    warm_fps = (len(done) - 1) / (done[-1][0] - done[0][0]) \
        if len(done) >= 2 and done[-1][0] > done[0][0] else None
    frames = report.extra["frames"]
    cold = report.extra["cold_frames"]
    row: dict[str, Any] = {
        "width": w,
        "height": h,
        "frames": frames,
        "cold_frames": cold,
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 3),
        "warm_fps": round(warm_fps, 3) if warm_fps else None,
        "iterations": report.iterations,
        "iterations_per_frame": round(report.iterations / max(frames, 1), 2),
        "mean_frame_loss": report.extra["mean_frame_loss"],
        "precision": stylizer.precision,
        "channels_last": stylizer.channels_last,
        "rss_mb_end": round(rss_mb(), 1),
    }
    if stylizer.device.type == "cuda":
        row["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(stylizer.device)
                                          / 2**20)
    return {"device": str(stylizer.device), "config": {k: v for k, v in to_mapping(
        config).items() if k in ("model", "style", "video")}, "result": row}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="1024x576", help="WxH of the synthetic clip")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "mosaic.png")
    parser.add_argument("--weights", help="VGG-19 state dict (default: random full-width)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--precision", help="model.precision values to run, comma-separated "
                        "(default: the config's)")
    parser.add_argument("--json", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="nstd-fps-") as folder:
        for precision in (args.precision.split(",") if args.precision else [None]):
            measured = measure(args, Path(folder), precision)
            runs.append(measured)
            r = measured["result"]
            print(f"{r['width']}x{r['height']} {r['frames']} frames on {measured['device']} "
                  f"({r['precision']}): {r['fps']:.2f} frames/s overall, warm "
                  f"{r['warm_fps']} frames/s", file=sys.stderr)
    device = runs[0]["device"]
    report = {
        "benchmark": "nstd video job end to end",
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "weights": args.weights or "random full-width VGG-19 (timing only; images meaningless)",
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

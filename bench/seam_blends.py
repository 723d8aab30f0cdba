"""Ways of hiding the seam of a split shot, on one set of unit outputs: E_warp across it, loss.

    python bench/seam_blends.py --json bench/results/seam-blends-48px.json   # ~2 min, 2 cores

One shot, a smooth texture panning 1 px right per frame (uniform motion: every frame pair moves
the same, so the per-pair E_warp of the unsplit run is even, unlike `write_shots_clip`'s pan,
whose vertical half-pixel steps make every other pair ~1.6x the median). Stylized unsplit
(`nstd.pipeline.run_job`) and split into units (`nstd.testing.split.run_split`, which also runs
the seam pass); then the same stored unit frames are encoded once per way of joining them:
hard cut, linear cross-fade, contrast-preserving cross-fade (`nstd.temporal.blend`), and the
seam pass's output. Measured on the encoded videos (`nstd.testing.split.measure`): E_t of
every pair, the seam pairs' max and mean over the median of the other pairs (bar 1.5), and the
mean frame loss over the unsplit run's (bar: within 5 %). The unsplit row is measured on the
same seam pairs: the noise floor of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--max-segment-frames", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20, help="style.iterations (cold)")
    parser.add_argument("--width-divisor", type=int, default=8, help="1: the full-width net")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from nstd.config import parse_config
    from nstd.daemon.engines import EngineCache
    from nstd.job import JobRequest
    from nstd.media.container import VideoWriter, probe_video
    from nstd.pipeline import load_style_target, run_job
    from nstd.temporal.blend import contrast_preserving_crossfade
    from nstd.temporal.plan import output_size
    from nstd.temporal.seam import crossfade
    from nstd.temporal.store import FrameStore
    from nstd.testing.media import write_test_image
    from nstd.testing.pan import write_pan_clip
    from nstd.testing.split import measure, run_split, seam_pairs
    from nstd.testing.weights import write_random_vgg19

    folder = Path(tempfile.mkdtemp(prefix="nstd-seam-blends-"))
    weights = write_random_vgg19(folder / "vgg19.pth", seed=0, width_divisor=args.width_divisor)
    size = (args.width, args.width * 2 // 3 // 2 * 2)
    clip = write_pan_clip(folder / "pan.mp4", args.frames, size)
    style = write_test_image(folder / "style.png", size=(32, 32), seed=5)
    config = parse_config({"model": {"weights": str(weights), "device": "cpu"},
                           "style": {"max_side": args.width, "iterations": args.iterations},
                           "cluster": {"max_unit_frames": args.max_segment_frames,
                                       "unit_overlap": args.overlap}})
    stylizer = EngineCache.load(config.model).stylizer(config)
    request = JobRequest(source=clip, output=folder / "unsplit.mp4", styles=(style,),
                         blend=(1.0,), config=config, work_dir=folder / "w0")
    target = load_style_target(stylizer, request)
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    run_job(request, stylizer)
    seconds["unsplit"] = time.monotonic() - t0
    t0 = time.monotonic()
    split = run_split(clip, folder / "seam_pass.mp4", folder / "w1", config, stylizer, target)
    seconds["split+seam_pass"] = time.monotonic() - t0
    units, plan = split["units"], split["plan"]
    store = FrameStore.open(folder / "w1", {"split": str(clip)})
    info = probe_video(clip, config.limits)
    out_size = output_size(info.width, info.height, config.style.max_side)
    fades = {index: (position, u.start - u.first) for u in units
             for position, index in enumerate(range(u.first, u.start))}

    def encode(name: str, join: Callable[..., np.ndarray] | None) -> Path:
        path = folder / f"{name}.mp4"
        writer = VideoWriter(path, info, out_size, crf=config.video.crf,
                             preset=config.video.preset)
        for index in range(int(plan["frames"])):
            rgb = store.load(index)
            if join is not None and index in fades:
                rgb = join(rgb, store.load_side(index, "overlap"), *fades[index])
            writer.write(np.round(rgb * 255.0).astype(np.uint8), int(plan["pts"][index]))
        writer.close()
        return path

    outputs = {"unsplit": folder / "unsplit.mp4", "hard_cut": encode("hard_cut", None),
               "crossfade": encode("crossfade", crossfade),
               "contrast_fade": encode("contrast_fade", contrast_preserving_crossfade),
               "seam_pass": folder / "seam_pass.mp4"}
    rows: dict[str, Any] = {}
    for name, path in outputs.items():
        rows[name] = measure(clip, path, stylizer, target, config,
                             seam_pairs(units, name != "hard_cut"))
    base = rows["unsplit"]["mean_frame_loss"]
    print(f"{args.frames} frames at {out_size[0]}x{out_size[1]}, 1 px/frame pan, width/"
          f"{args.width_divisor} random VGG-19, units "
          f"{sorted((u.first, u.start, u.stop) for u in units)}; seconds {seconds}")
    print(f"{'join':>14} {'E_warp':>9} {'median':>9} {'seam max/med':>13} "
          f"{'seam mean/med':>14} {'loss':>9} {'loss/unsplit':>13}")
    for name, row in rows.items():
        row["loss_vs_unsplit"] = row["mean_frame_loss"] / base
        print(f"{name:>14} {row['ewarp']:>9.5f} {row['median_other_pairs']:>9.5f} "
              f"{row['seam_max_ratio']:>13.2f} {row['seam_mean_ratio']:>14.2f} "
              f"{row['mean_frame_loss']:>9.3f} {row['loss_vs_unsplit']:>13.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
            "args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
            "units": [[u.first, u.start, u.stop] for u in units], "rows": rows}, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

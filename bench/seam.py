"""The seam where a long shot is split between workers: E_warp across it and the frame loss.

    python bench/seam.py                       # 64 frames at 96 px, full-width net, ~6 min
    python bench/seam.py --frames 96 --max-side 96 --max-segment-frames 24 --overlap 12 \\
        --json bench/results/seam-96px-pan-overlap12.json

One shot with slow camera motion (--clip, below), stylized three ways with the same engine
(full-width VGG-19, random weights: losses and E_warp are well defined, the pictures mean
nothing) and the shipped video settings:
- unsplit: the local path (`nstd.pipeline.run_job`), one unit;
- seam_pass: as `cluster.backend: ray` does it (`nstd.testing.split.run_split`): units of at
  most --max-segment-frames frames, each after the first starting --overlap frames early,
  cold; then each overlap remade by the seam pass (`nstd.temporal.seam`);
- crossfade: the same units, the overlaps only cross-faded (`nstd.temporal.seam.crossfade`);
- hard_cut: the same units, no fade (the next unit's frames from its start).
Measured on the encoded videos: E_t (Lai et al. warping error) of every frame pair; the seam
pairs are those touched by a fade (from the pair entering it to the pair leaving it; for the
hard cut, the one pair at the boundary); reported: max and mean of seam pairs / median of the
other pairs of the same run (bar: max <= 1.5), and the mean frame loss (content + style + tv
of each decoded output frame, `Stylizer.evaluate`, the same for all runs) / unsplit's
(bar: within 5 %).

Also per unit boundary: the mean E_t of the pairs its seam touches over the mean of the same
pairs in the unsplit run (`boundary_ratios`; bar: <= 1.5), the comparison that stays fair when
the unsplit run's own pairs vary a lot (real motion, warm frames that stop at once).

--clip static|pan|zoom|fast|fade|cuts (default pan): the video panel's clips with the motion of
real footage (`nstd.testing.clips`: layers moving differently, occlusion, zoom, noise), made at
1.5x the stylized size. --clip uniform: a smooth texture panning 1 px right per frame, every
pair alike (`nstd.testing.pan`). --clip stepped: 1 px right and 0.5 px down, i.e. down by 0
and 1 px on alternate frames (`nstd.testing.shots`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--max-side", type=int, default=96)
    parser.add_argument("--max-segment-frames", type=int, default=24)
    parser.add_argument("--overlap", type=int, default=12)  # the shipped default
    parser.add_argument("--cold-iterations", type=int, default=50)
    parser.add_argument("--width-divisor", type=int, default=1, help="8: the slim test net")
    parser.add_argument("--clip", default="pan",
                        choices=("uniform", "stepped", "static", "pan", "zoom", "fast", "fade",
                                 "cuts"))
    parser.add_argument("--variants", default="seam_pass,crossfade,hard_cut",
                        help="which split runs beside the unsplit one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from nstd.config import parse_config
    from nstd.daemon.engines import EngineCache
    from nstd.job import JobRequest
    from nstd.pipeline import load_style_target, run_job
    from nstd.testing.clips import write_scene_clip
    from nstd.testing.pan import write_pan_clip
    from nstd.testing.shots import write_shots_clip
    from nstd.testing.split import boundary_ratios, measure, run_split, seam_pairs
    from nstd.testing.weights import write_random_vgg19

    torch.set_num_threads(os.cpu_count() or 1)
    folder = Path(tempfile.mkdtemp(prefix="nstd-seam-"))
    weights = write_random_vgg19(folder / "vgg19.pth", seed=0, width_divisor=args.width_divisor)
    size = (args.max_side, args.max_side * 3 // 4 // 2 * 2)
    if args.clip == "uniform":
        clip = write_pan_clip(folder / "pan.mp4", args.frames, size)
    elif args.clip == "stepped":
        clip = write_shots_clip(folder / "pan.mp4", shots=1, frames_per_shot=args.frames,
                                size=size)
    else:
        clip = write_scene_clip(folder / "pan.mp4", args.clip, args.frames,
                                (size[0] * 3 // 2 // 2 * 2, size[1] * 3 // 2 // 2 * 2))
    style = ROOT / "styles" / "mosaic.png"
    config = parse_config({"model": {"weights": str(weights), "device": "cpu"},
                           "style": {"max_side": args.max_side,
                                     "iterations": args.cold_iterations},
                           "cluster": {"max_unit_frames": args.max_segment_frames,
                                       "unit_overlap": args.overlap}})
    engines = EngineCache.load(config.model)
    stylizer = engines.stylizer(config)
    request = JobRequest(source=clip, output=folder / "unsplit.mp4", styles=(style,),
                         blend=(1.0,), config=config, work_dir=folder / "w0")
    target = load_style_target(stylizer, request)
    rows: dict[str, Any] = {}
    t0 = time.monotonic()
    run_job(request, stylizer)
    rows["unsplit"] = {"seconds": time.monotonic() - t0}
    split = {}
    wanted = args.variants.split(",")
    variants = tuple((name, fade) for name, fade in (("seam_pass", "seam"), ("crossfade", True),
                                                     ("hard_cut", False)) if name in wanted)
    for name, fade in variants:
        t0 = time.monotonic()
        split = run_split(clip, folder / f"{name}.mp4", folder / f"w-{name}", config,
                          stylizer, target, fade=fade)
        rows[name] = {"seconds": time.monotonic() - t0}
    units = split["units"]
    rows["unsplit"].update(measure(clip, folder / "unsplit.mp4", stylizer, target, config,
                                   seam_pairs(units, True)))
    for name, fade in variants:
        rows[name].update(measure(clip, folder / f"{name}.mp4", stylizer, target, config,
                                  seam_pairs(units, bool(fade))))
        rows[name]["loss_vs_unsplit"] = rows[name]["mean_frame_loss"] / \
            rows["unsplit"]["mean_frame_loss"]
        if fade:
            rows[name]["boundary_vs_unsplit"] = boundary_ratios(rows[name], rows["unsplit"],
                                                                units)
    print(f"{args.frames} frames at {size[0]}x{size[1]}, {args.clip} clip, units "
          f"{sorted((u.first, u.start, u.stop) for u in units)}")
    print(f"{'run':>10} {'E_warp':>9} {'median':>9} {'seam max/med':>13} {'seam mean/med':>14} "
          f"{'loss':>8} {'loss/unsplit':>12}")
    for name, row in rows.items():
        ratio = row.get("loss_vs_unsplit", 1.0)
        mx = row["seam_max_ratio"]
        mn = row["seam_mean_ratio"]
        print(f"{name:>10} {row['ewarp']:>9.5f} {row['median_other_pairs']:>9.5f} "
              f"{mx if mx is not None else float('nan'):>13.2f} "
              f"{mn if mn is not None else float('nan'):>14.2f} "
              f"{row['mean_frame_loss']:>8.4f} {ratio:>12.3f}"
              + ("  per boundary vs unsplit: "
                 + " ".join(f"{r:.2f}" for r in row["boundary_vs_unsplit"])
                 if "boundary_vs_unsplit" in row else ""))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "args": {k: str(v) for k, v in vars(args).items()},
            "units": [[u.first, u.start, u.stop] for u in units], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory and seconds per iteration against output size, with and without tiling.

    python bench/memory.py                                   # 256 512 1024, budget 1.5 GiB
    python bench/memory.py --sizes 256,512,1024,2048,4096 --budget 4 --iterations 1
    python bench/memory.py --equality-size 384 --json bench/results/memory.json

Each row is one fresh subprocess (`nstd.testing.memprobe`): full-width VGG-19 with random
weights (the memory and arithmetic of the real network; pictures mean nothing), the shipped
style settings at one scale (no coarse-to-fine), `--iterations` iterations on a random
square image. `peak MB` is the high-water mark of resident memory the run adds over the
process after set-up (network loaded, style Grams made); `s/it` includes the run's content
feature pass, so with 1-2 iterations it overstates a long run's per-iteration time a little.
Untiled rows whose estimated peak exceeds `--max-untiled-gb` are skipped (said so).

Then the equality check: at `--equality-size`, the loss and its gradient evaluated whole and
tile by tile (160- and 96-pixel cores), and their difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import torch  # noqa: E402

from nstd.config import parse_config  # noqa: E402
from nstd.engine.features import VGGFeatures  # noqa: E402
from nstd.engine.memory import activation_bytes_per_pixel, image_state_bytes_per_pixel  # noqa: E402
from nstd.engine.stylizer import Stylizer  # noqa: E402
from nstd.engine.weights import load_vgg19_state_dict  # noqa: E402
from nstd.testing.weights import random_vgg19_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def probe(weights: Path, side: int, budget: float | None, iterations: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "nstd.testing.memprobe", "--weights", str(weights),
               "--size", str(side), "--iterations", str(iterations)]
    if budget is not None:
        command += ["--budget", str(budget)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def equality(weights: Path, side: int) -> list[dict[str, Any]]:
    """Loss and gradient, whole vs tiled, at one size: relative differences."""
    style = dataclasses.replace(parse_config({}).style, scales=(1.0,))
    features = VGGFeatures(load_vgg19_state_dict(weights),
                           [style.content_layer, *style.style_layers])
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, side, side, generator=gen)
    x0 = torch.rand(1, 3, side, side, generator=gen)
    style_image = torch.rand(1, 3, 128, 128, generator=gen)
    rows = []
    reference: tuple[torch.Tensor, torch.Tensor] | None = None
    for tile_side in (None, 160, 96):
        stylizer = Stylizer(features, style, torch.device("cpu"), tile_side=tile_side)
        target = stylizer.prepare_style([style_image], [1.0])
        problem = stylizer._problem(content, target, (), (side, side))
        x = x0.clone().requires_grad_(True)
        values = stylizer._values(problem, x)
        values[0].backward()
        assert x.grad is not None
        if reference is None:
            reference = (values.detach(), x.grad.clone())
            continue
        loss_diff = float((values[0].detach() - reference[0][0]).abs() / reference[0][0].abs())
        grad_diff = float((x.grad - reference[1]).abs().max() / reference[1].abs().max())
        rows.append({"size": side, "tile_core": tile_side,
                     "tiles": len(stylizer.tiles((side, side))),
                     "loss_rel_diff": loss_diff, "grad_max_rel_diff": grad_diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024", help="square output sides")
    parser.add_argument("--budget", type=float, default=1.5, help="GiB for the tiled rows")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--max-untiled-gb", type=float, default=12.0,
                        help="skip untiled rows estimated above this")
    parser.add_argument("--equality-size", type=int, default=256)
    parser.add_argument("--weights", help="VGG-19 state dict (default: full-width random)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nstd-memory-") as name:
        weights = Path(args.weights) if args.weights else random_vgg19_file(name)
        style = parse_config({}).style
        features = VGGFeatures(load_vgg19_state_dict(weights),
                               [style.content_layer, *style.style_layers])
        per_pixel = activation_bytes_per_pixel(features, [style.content_layer,
                                                          *style.style_layers]) + \
            image_state_bytes_per_pixel(3, style.lbfgs_history)
        rows: list[dict[str, Any]] = []
        print(f"{'side':>6} {'mode':>8} {'budget':>7} {'tiles':>6} {'peak MB':>9} {'s/it':>8}")
        for side in (int(s) for s in args.sizes.split(",") if s):
            for budget in (None, args.budget):
                if budget is None and per_pixel * side * side / 2**30 > args.max_untiled_gb:
                    print(f"{side:>6} {'untiled':>8} {'-':>7} {'-':>6} {'skipped':>9} "
                          f"(estimated {per_pixel * side * side / 2**30:.1f} GiB)", flush=True)
                    continue
                row = probe(weights, side, budget, args.iterations)
                row["mode"] = "untiled" if budget is None else "tiled"
                rows.append(row)
                shown = "-" if budget is None else f"{budget:g}G"
                print(f"{side:>6} {row['mode']:>8} {shown:>7} {row['tiles']:>6} "
                      f"{row['peak_mb']:>9.0f} {row['seconds_per_iteration']:>8.2f}", flush=True)
        checks = equality(weights, args.equality_size)
        for check in checks:
            print(f"equality at {check['size']} px, core {check['tile_core']} "
                  f"({check['tiles']} tiles): loss rel diff {check['loss_rel_diff']:.2e}, "
                  f"gradient max rel diff {check['grad_max_rel_diff']:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "equality": checks,
                                         "iterations": args.iterations,
                                         "network": "full-width VGG-19, random weights"},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

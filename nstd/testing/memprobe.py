"""Peak memory of one stylization, measured in a fresh process (tests and bench/memory.py).

    python -m nstd.testing.memprobe --weights W.pth --size 512 --budget 0.25 --iterations 2

Prints one JSON line: the peak resident memory the run added over the process after set-up
(`peak_mb`: the network and style target are loaded, and one tiny run has warmed the
kernels), the tiles used, seconds per iteration, and the final loss. The peak is the
kernel's own high-water mark (VmHWM), reset just before the run through
/proc/self/clear_refs, so no short spike is missed (Linux only).

A fresh process per measurement, because the allocator keeps freed memory for reuse: a
second run in the same process would look cheaper than it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.stylizer import Stylizer
from nstd.engine.weights import load_vgg19_state_dict
from nstd.testing.rss import current_bytes, peak_bytes, reset_peak


def measure(weights: str, size: tuple[int, int], budget_gb: float | None, iterations: int,
            tile_side: int | None = None, history: int = 20,
            layers: tuple[str, ...] | None = None) -> dict[str, object]:
    """Peak added memory and seconds per iteration of `iterations` full-size iterations
    (no coarse scales, L-BFGS with `history` pairs) on a random image of `size` (H, W);
    `layers`: content layer then style layers (default: the shipped ones)."""
    style = dataclasses.replace(parse_config({}).style, iterations=iterations,
                                scales=(1.0,), tolerance=0.0, lbfgs_history=history)
    if layers:
        style = dataclasses.replace(style, content_layer=layers[0],
                                    style_layers={name: 1.0 for name in layers[1:]})
    features = VGGFeatures(load_vgg19_state_dict(weights),
                           [style.content_layer, *style.style_layers])
    stylizer = Stylizer(features, style, torch.device("cpu"), max_memory_gb=budget_gb,
                        tile_side=tile_side)
    gen = torch.Generator().manual_seed(0)
    target = stylizer.prepare_style([torch.rand(1, 3, 64, 64, generator=gen)], [1.0])
    stylizer.run(torch.rand(1, 3, 32, 32, generator=gen), target, iterations=1)  # warm-up
    content = torch.rand(1, 3, *size, generator=gen)
    # The style Grams at this size are part of the set-up, not of the optimization.
    stylizer._style_grams(target, size, None)
    tiles = len(stylizer.tiles(size))
    before = current_bytes()
    reset_peak()
    started = time.perf_counter()
    result = stylizer.run(content, target, iterations=iterations)
    seconds = time.perf_counter() - started
    return {"size": list(size), "budget_gb": budget_gb, "tiles": tiles,
            "peak_mb": round((peak_bytes() - before) / 2**20, 1),
            "seconds_per_iteration": round(seconds / max(1, result.iterations), 3),
            "iterations": result.iterations, "final_loss": result.final_loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--size", required=True, help="H or HxW")
    parser.add_argument("--budget", type=float, help="model.max_memory_gb (default: none)")
    parser.add_argument("--tile-side", type=int)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--history", type=int, default=20, help="style.lbfgs_history")
    parser.add_argument("--layers", help="content layer, then style layers, comma-separated")
    args = parser.parse_args(argv)
    h, _, w = args.size.lower().partition("x")
    size = (int(h), int(w or h))
    print(json.dumps(measure(args.weights, size, args.budget, args.iterations,
                             args.tile_side, args.history,
                             tuple(args.layers.split(",")) if args.layers else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does the engine's iteration loop synchronise with the host? (CUDA; a no-op report elsewhere)

    python bench/sync_check.py --device cuda --size 1024x576 --json sync.json

Runs `Stylizer.run` twice under `torch.cuda.set_sync_debug_mode("warn")`, with a short and a
long budget, and counts the synchronising CUDA calls PyTorch reports. Setup and the end of a
run (the result copied to the host, the final losses read) sync a fixed number of times; an
iteration loop without host syncs adds none per extra iteration, so `syncs_per_iteration`
should be 0. Early stopping is off (tolerance 0) so both runs do their whole budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.config import parse_config  # noqa: E402
from nstd.engine.features import VGGFeatures  # noqa: E402
from nstd.engine.stylizer import Stylizer, resolve_device  # noqa: E402


def count_syncs(stylizer: Stylizer, content: torch.Tensor, target: object,
                iterations: int) -> tuple[int, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stylizer.run(content, target, iterations=iterations,  # type: ignore[arg-type]
                         coarse_to_fine=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    messages = [str(w.message).splitlines()[0] for w in caught
                if "synchroniz" in str(w.message).lower()]
    return len(messages), messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="1024x576")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    report: dict[str, object] = {"benchmark": "host syncs in the iteration loop",
                                 "device": str(device)}
    if device.type != "cuda":
        report["result"] = "not applicable: no CUDA device (the loop is checked on CUDA only)"
    else:
        from nstd.testing.weights import random_vgg19_state_dict

        w, _, h = args.size.lower().partition("x")
        style = dataclasses.replace(parse_config({}).style, tolerance=0.0, scales=(1.0,))
        features = VGGFeatures(random_vgg19_state_dict(seed=0),
                               [style.content_layer, *style.style_layers])
        stylizer = Stylizer(features, style, device, precision=args.precision,
                            channels_last=True)
        gen = torch.Generator().manual_seed(0)
        content = torch.rand(1, 3, int(h or w), int(w), generator=gen)
        target = stylizer.prepare_style([torch.rand(1, 3, 256, 256, generator=gen)], [1.0])
        stylizer.run(content, target, iterations=3, coarse_to_fine=False)  # warm-up
        short, _ = count_syncs(stylizer, content, target, args.short)
        long, messages = count_syncs(stylizer, content, target, args.long)
        per_iteration = (long - short) / (args.long - args.short)
        report.update({
            "precision": args.precision,
            "size": args.size,
            "syncs_short_run": short,
            "syncs_long_run": long,
            "iterations": [args.short, args.long],
            "syncs_per_iteration": per_iteration,
            "pass": per_iteration == 0,
            "sync_messages": sorted(set(messages))[:10],
        })
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Milliseconds per optimizer iteration of the nstd engine at a few sizes (a benchmark, not a test).

    python bench/iteration.py        # CPU: 64,128,256 px fp32; CUDA: 512x512,1024x576,1920x1080
                                     # in fp32 (TF32) and bf16
    python bench/iteration.py --sizes 128,1024x576 --precision fp32,bf16 --out bench/out/it.json

One iteration = one forward + backward pass through VGG-19 up to relu5_1 plus Grams, losses and
the optimizer step. The time is taken between progress reports (each follows a host sync),
after `--warmup` iterations, so one-time setup (style Grams, content features, cuDNN tuning)
is excluded; `run_seconds` is the whole run for comparison. Without --weights the network has
random full-width weights: the same cost as the real one, but the images mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.config import parse_config  # noqa: E402
from nstd.engine.features import VGGFeatures  # noqa: E402
from nstd.engine.stylizer import Progress, Stylizer, resolve_device  # noqa: E402
from nstd.engine.weights import load_vgg19_state_dict  # noqa: E402

# Design estimate (../shared/DESIGN.md): forward + input gradient + Grams ~ 1.5 MFLOP/pixel.
FLOP_PER_PIXEL = 1.5e6
CPU_SIZES = "64,128,256"
CUDA_SIZES = "512x512,1024x576,1920x1080"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'64,1024x576' -> [(64, 64), (1024, 576)] as (width, height)."""
    sizes = []
    for item in text.split(","):
        w, _, h = item.strip().lower().partition("x")
        sizes.append((int(w), int(h or w)))
    return sizes


def measure(stylizer: Stylizer, size: tuple[int, int], warmup: int, iterations: int,
            seed: int = 0) -> dict:
    """Time `iterations` iterations after `warmup` ones at size (width, height)."""
    w, h = size
    gen = torch.Generator().manual_seed(seed)
    content = torch.rand(1, 3, h, w, generator=gen)
    style = torch.rand(1, 3, h, w, generator=gen)
    target = stylizer.prepare_style([style], [1.0])
    stamps: dict[int, float] = {}

    def progress(p: Progress) -> None:
        stamps[p.iteration] = p.elapsed

    if stylizer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(stylizer.device)
    started = time.perf_counter()
    result = stylizer.run(content, target, iterations=warmup + iterations,
                          coarse_to_fine=False, progress=progress)
    run_seconds = time.perf_counter() - started
    per_iteration = (stamps[warmup + iterations] - stamps[warmup]) / iterations
    row = {
        "width": w,
        "height": h,
        "precision": stylizer.precision,
        "channels_last": stylizer.channels_last,
        "ms_per_iteration": round(per_iteration * 1000, 3),
        "est_tflops": round(FLOP_PER_PIXEL * w * h / per_iteration / 1e12, 4),
        "timed_iterations": iterations,
        "warmup_iterations": warmup,
        "run_seconds": round(run_seconds, 3),
        "loss_ratio": round(result.final_loss / result.initial_loss, 4),
    }
    if stylizer.device.type == "cuda":
        row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(stylizer.device) / 2**20)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help=f"WxH or N (square), comma-separated "
                                        f"(default: CPU {CPU_SIZES}; CUDA {CUDA_SIZES})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", help="fp32,bf16 (default: fp32 on CPU, both on CUDA)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="auto = on for CUDA only")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (model.compile); compile time falls in "
                             "the warm-up iterations")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--weights", help="VGG-19 state dict (default: random full-width)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout only)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 1:
        parser.error("--iterations and --warmup must be >= 1")

    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    sizes = parse_sizes(args.sizes or (CUDA_SIZES if on_cuda else CPU_SIZES))
    precisions = (args.precision or ("fp32,bf16" if on_cuda else "fp32")).split(",")
    if on_cuda and not torch.cuda.is_bf16_supported() and "bf16" in precisions:
        precisions.remove("bf16")
    channels_last = on_cuda if args.channels_last == "auto" else args.channels_last == "on"
    style = dataclasses.replace(parse_config({}).style, optimizer=args.optimizer,
                                tolerance=0.0, scales=(1.0,))
    features = VGGFeatures(load_weights(args.weights),
                           [style.content_layer, *style.style_layers])

    report = {
        "benchmark": "nstd ms per iteration",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else platform.processor()
        or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "optimizer": args.optimizer,
        "compiled": args.compile,
        "weights": args.weights or "random full-width VGG-19 (timing only; images meaningless)",
        "date": time.strftime("%Y-%m-%d"),
        "results": [],
    }
    for precision in precisions:
        stylizer = Stylizer(features, style, device, precision=precision,
                            channels_last=channels_last, compile_network=args.compile)
        for size in sizes:
            row = measure(stylizer, size, args.warmup, args.iterations)
            report["results"].append(row)
            print(f"{size[0]}x{size[1]} {precision}: {row['ms_per_iteration']:.1f} ms/iteration",
                  file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


def load_weights(path: str | None) -> dict[str, torch.Tensor]:
    """The given weights, or random full-width ones written to a temp file and loaded through
    the normal path."""
    if path:
        return load_vgg19_state_dict(path)
    from nstd.testing.weights import write_random_vgg19

    with tempfile.TemporaryDirectory() as folder:
        file = write_random_vgg19(os.path.join(folder, "vgg19-random.pth"), seed=0)
        return load_vgg19_state_dict(file)


if __name__ == "__main__":
    sys.exit(main())

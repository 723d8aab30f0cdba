"""Loss per network evaluation: nstd's optimizer against stock ones, over a panel of pairs.

    python bench/convergence.py                                  # 64,128,256 px, 12 pairs
    python bench/convergence.py --sizes 64 --pairs 3 --out bench/out/c.json --plot c.png
    python bench/convergence.py --merge a.json b.json --out all.json --plot all.png

For each (content, style) pair of `nstd.testing.panel.PANEL` (generated images of clearly
different character), each size and each optimizer, the image is optimized from the content
with nstd's own loss terms (full-width VGG-19, shipped loss weights, no coarse-to-fine), and
the loss of the best *clamped* image seen so far is recorded after every network evaluation
(forward + backward; line-search evaluations count). Figures are that loss relative to the
start image's, after 10, 20, 50 and 100 evaluations. Optimizers:

    default      nstd's engine as shipped (`Stylizer.run`: BoxLBFGS, best image returned)
    lbfgs        torch.optim.LBFGS, fixed step (max_iter=1, as most style-transfer code)
    wolfe        torch.optim.LBFGS with line_search_fn="strong_wolfe"
    adam0.02     torch.optim.Adam, lr 0.02 (image values in [0, 1])
    adam0.05     torch.optim.Adam, lr 0.05

Stock optimizers get every benefit: each evaluated iterate is clamped to [0, 1] and scored
(that extra forward pass is not counted), and the best score so far is reported. The
"scale" column runs the default with every loss weight multiplied by 10^k, k = -3..3, and
reports the largest relative change of the 20- and 50-evaluation figures against k = 0,
beside the change that a 2^-20 perturbation of one weight causes (float32 rounding alone).
At the end it prints, per size and count, the worst ratio default / best stock optimizer and
whether the default halves the start loss within 50 evaluations. `--merge` joins the rows of
runs split over time or machines (a row is a pair at a size; a later file adds or replaces
optimizers and the scale column), e.g. the stock optimizers measured once and the default
re-measured after an engine change: the stock figures do not depend on nstd's engine.

Without --weights the network has random full-width weights: right for speed and
convergence mechanics, never for judging how an image looks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.config import StyleConfig, parse_config  # noqa: E402
from nstd.engine.features import VGGFeatures  # noqa: E402
from nstd.engine.stylizer import Progress, Stylizer  # noqa: E402
from nstd.engine.weights import load_vgg19_state_dict  # noqa: E402
from nstd.testing.panel import PANEL, Pair  # noqa: E402
from nstd.testing.weights import random_vgg19_file  # noqa: E402

COUNTS = (10, 20, 50, 100)
STOCK = ("lbfgs", "wolfe", "adam0.02", "adam0.05")
SCALE_KS = (-3, -2, -1, 0, 1, 2, 3)


def best_so_far(values: list[float], start: float, evaluations: int) -> list[float]:
    """Running minimum of `values` relative to `start`, padded to `evaluations` entries."""
    out, low = [], math.inf
    for v in values[:evaluations]:
        low = min(low, v if math.isfinite(v) else math.inf)
        out.append(low / start)
    while len(out) < evaluations:
        out.append(out[-1] if out else 1.0)
    return out


def run_default(stylizer: Stylizer, content: torch.Tensor, style: torch.Tensor,
                evaluations: int) -> tuple[list[float], float]:
    """nstd's engine through its public API. Returns (relative curve, seconds)."""
    target = stylizer.prepare_style([style], [1.0])
    seen: list[float] = []

    def progress(p: Progress) -> None:
        seen.append(p.loss)  # the best image so far (the engine reports that)

    started = time.perf_counter()
    result = stylizer.run(content, target, iterations=evaluations, coarse_to_fine=False,
                          progress=progress, tolerance=0.0)
    seconds = time.perf_counter() - started
    return best_so_far(seen, result.initial_loss, evaluations), seconds


def run_stock(name: str, stylizer: Stylizer, content: torch.Tensor, style: torch.Tensor,
              evaluations: int) -> tuple[list[float], float]:
    """A torch optimizer on exactly the loss the engine minimises (its own terms)."""
    target = stylizer.prepare_style([style], [1.0])
    size = (int(content.shape[-2]), int(content.shape[-1]))
    # The engine's own loss terms at this size (private, but the point is the same loss).
    problem = stylizer._problem(content.to(stylizer.device), target, (), size)

    def loss_of(image: torch.Tensor) -> torch.Tensor:
        return stylizer._values(problem, image)[1] * stylizer.loss_scale

    x = content.detach().clone().to(stylizer.device).requires_grad_(True)
    with torch.no_grad():
        start = float(loss_of(x.clamp(0, 1)))
    scores: list[float] = []
    optimizer: Any
    if name == "lbfgs":
        optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=20)
    elif name == "wolfe":
        optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=evaluations, max_eval=evaluations,
                                      history_size=20, line_search_fn="strong_wolfe",
                                      tolerance_grad=0.0, tolerance_change=0.0)
    elif name.startswith("adam"):
        optimizer = torch.optim.Adam([x], lr=float(name[4:]))
    else:
        raise ValueError(f"unknown optimizer {name!r}")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(x)
        loss.backward()
        with torch.no_grad():  # the score: this iterate clamped, as a user would save it
            scores.append(float(loss_of(x.detach().clamp(0, 1))))
        return loss

    started = time.perf_counter()
    while len(scores) < evaluations:
        before = len(scores)
        optimizer.step(closure)
        if len(scores) == before:  # strong-Wolfe L-BFGS gave up: it makes no more progress
            break
    seconds = time.perf_counter() - started
    return best_so_far(scores, start, evaluations), seconds


def scaled(style: StyleConfig, k: int) -> StyleConfig:
    f = 10.0 ** k
    return dataclasses.replace(style, content_weight=style.content_weight * f,
                               style_weight=style.style_weight * f,
                               tv_weight=style.tv_weight * f)


def measure_pair(pair: Pair, side: int, features: VGGFeatures, style: StyleConfig,
                 optimizers: list[str], evaluations: int, scale_column: bool,
                 say: Callable[[str], None]) -> dict[str, Any]:
    content, style_image = pair.images(side)
    device = torch.device("cpu")
    stylizer = Stylizer(features, style, device)
    row: dict[str, Any] = {"pair": pair.name, "size": side, "optimizers": {}}
    for name in optimizers:
        if name == "default":
            curve, seconds = run_default(stylizer, content, style_image, evaluations)
        else:
            curve, seconds = run_stock(name, stylizer, content, style_image, evaluations)
        row["optimizers"][name] = {
            "at": {str(n): round(curve[n - 1], 6) for n in COUNTS if n <= evaluations},
            "curve": [round(v, 6) for v in curve],
            "seconds": round(seconds, 2),
        }
    if scale_column:
        at = {}
        for k in SCALE_KS:
            curve, _ = run_default(Stylizer(features, scaled(style, k), device), content,
                                   style_image, 50)
            at[k] = (curve[19], curve[49])
        change = max(max(abs(a / at[0][0] - 1), abs(b / at[0][1] - 1)) for a, b in at.values())
        # Reference: a perturbation of one weight by 2^-20 (not a change of scale) shows how
        # far float32 rounding alone moves the figures along the trajectory.
        jitter = dataclasses.replace(style, style_weight=style.style_weight * (1 + 2 ** -20))
        curve, _ = run_default(Stylizer(features, jitter, device), content, style_image, 50)
        noise = max(abs(curve[19] / at[0][0] - 1), abs(curve[49] / at[0][1] - 1))
        row["scale"] = {"relative_at_20_50": {str(k): [round(a, 6), round(b, 6)]
                                              for k, (a, b) in at.items()},
                        "max_relative_change": round(change, 5),
                        "rounding_reference_change": round(noise, 5)}
    cells = " ".join(f"{n}={row['optimizers'][n]['at']}" for n in optimizers)
    extra = (f" scale-change={row['scale']['max_relative_change']}"
             f" (rounding reference {row['scale']['rounding_reference_change']})"
             if scale_column else "")
    say(f"{side}px {pair.name}: {cells}{extra}")
    return row


def check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst ratio default / best stock optimizer per size and count, and the halving bar."""
    summary: dict[str, Any] = {}
    for row in rows:
        opts = row["optimizers"]
        if "default" not in opts:
            continue
        stock = [n for n in opts if n != "default"]
        size = summary.setdefault(str(row["size"]), {"worst": {}, "halved_within_50": True})
        for count in opts["default"]["at"]:
            if not stock:
                continue
            best_name = min(stock, key=lambda n: opts[n]["at"][count])
            ratio = opts["default"]["at"][count] / max(opts[best_name]["at"][count], 1e-30)
            worst = size["worst"].get(count)
            if worst is None or ratio > worst["ratio"]:
                size["worst"][count] = {"ratio": round(ratio, 4), "pair": row["pair"],
                                        "best_stock": best_name}
        if "50" in opts["default"]["at"] and opts["default"]["at"]["50"] > 0.5:
            size["halved_within_50"] = False
    return summary


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({r["pair"] for r in rows}, key=[p.name for p in PANEL].index)
    sizes = sorted({r["size"] for r in rows})
    columns = min(4, len(pairs))
    per_size = -(-len(pairs) // columns)  # grid rows per size
    fig, axes = plt.subplots(per_size * len(sizes), columns,
                             figsize=(3.2 * columns, 2.5 * per_size * len(sizes)),
                             squeeze=False, sharex=True)
    for ax in axes.flat:
        ax.set_visible(False)
    for row in rows:
        index = pairs.index(row["pair"])
        ax = axes[sizes.index(row["size"]) * per_size + index // columns][index % columns]
        ax.set_visible(True)
        for name, data in row["optimizers"].items():
            ax.plot(range(1, len(data["curve"]) + 1), data["curve"], label=name,
                    linewidth=2.2 if name == "default" else 1.0)
        ax.set_yscale("log")
        ax.set_title(f"{row['pair']} {row['size']}px", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("network evaluations", fontsize=7)
        ax.set_ylabel("loss / start", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def report(rows: list[dict[str, Any]]) -> None:
    for size, data in check(rows).items():
        print(f"{size}px: halves within 50 evaluations on every pair: "
              f"{data['halved_within_50']}")
        for count, worst in data["worst"].items():
            print(f"  {count} evaluations: worst default/best-stock = {worst['ratio']} "
                  f"({worst['pair']}, best stock {worst['best_stock']})")


def merge(paths: list[Path], out: Path, plot_path: Path) -> int:
    """Join result files: rows keyed by (pair, size); later files add or replace optimizers
    and the scale column."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    meta = []
    for path in paths:
        data = json.loads(path.read_text())
        meta.append({"file": str(path), "seconds": data.get("seconds"),
                     "threads": data.get("threads")})
        for row in data["rows"]:
            key = (row["pair"], row["size"])
            merged = rows.setdefault(key, {"pair": row["pair"], "size": row["size"],
                                           "optimizers": {}})
            merged["optimizers"].update(row["optimizers"])
            if "scale" in row:
                merged["scale"] = row["scale"]
    order = [p.name for p in PANEL]
    joined = sorted(rows.values(), key=lambda r: (r["size"], order.index(r["pair"])))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"merged_from": meta, "summary": check(joined),
                               "rows": joined}, indent=1))
    plot(joined, plot_path)
    report(joined)
    print(f"wrote {out} and {plot_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--pairs", default="all",
                        help="all, a count (the first N pairs), or comma-separated names")
    parser.add_argument("--pairs-at-largest", type=int, default=None,
                        help="only the first N pairs at the largest size (time on a CPU)")
    parser.add_argument("--optimizers", default="default," + ",".join(STOCK))
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--scale-sizes", default="64",
                        help="sizes at which the 10^k scale column is measured ('' = none)")
    parser.add_argument("--weights", help="a VGG-19 state dict (default: random full width)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--merge", type=Path, nargs="+", help="join these result files")
    parser.add_argument("--out", type=Path, default=Path("bench/out/convergence.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/out/convergence.png"))
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.plot)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pairs == "all":
        pairs = list(PANEL)
    elif args.pairs.isdigit():
        pairs = list(PANEL[:int(args.pairs)])
    else:
        wanted = args.pairs.split(",")
        pairs = [p for p in PANEL if p.name in wanted]
    sizes = [int(s) for s in args.sizes.split(",")]
    scale_sizes = {int(s) for s in args.scale_sizes.split(",") if s}
    optimizers = args.optimizers.split(",")
    weights = args.weights or str(random_vgg19_file(tempfile.gettempdir()))
    style = dataclasses.replace(parse_config({}).style, scales=(1.0,))
    features = VGGFeatures(load_vgg19_state_dict(weights),
                           [style.content_layer, *style.style_layers])

    def say(text: str) -> None:
        print(text, flush=True)

    rows = []
    started = time.perf_counter()
    for side in sizes:
        chosen = pairs[:args.pairs_at_largest] if args.pairs_at_largest and \
            side == max(sizes) else pairs
        for pair in chosen:
            rows.append(measure_pair(pair, side, features, style, optimizers,
                                     args.evaluations, side in scale_sizes, say))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            summary = check(rows)
            args.out.write_text(json.dumps({
                "weights": "given" if args.weights else "random full-width VGG-19",
                "device": "cpu", "threads": torch.get_num_threads(),
                "machine": platform.machine(), "torch": torch.__version__,
                "seconds": round(time.perf_counter() - started, 1),
                "summary": summary, "rows": rows}, indent=1))
    plot(rows, args.plot)
    report(rows)
    say(f"wrote {args.out} and {args.plot} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

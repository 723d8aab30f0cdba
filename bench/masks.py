"""Style masks, before and after: two styles blended everywhere vs. one per region.

    python bench/masks.py                       # 160x120, slim random network, ~1 min
    python bench/masks.py --weights vgg19.pth --size 512 --iterations 200   # real weights

Writes into --out (default bench/results/masks): the synthetic photo (sky above ground),
the two style images, the two masks, `before.png` (both styles blended over the whole image,
`--style a --style b`) and `after.png` (`--style a --style-mask sky --style b
--style-mask ground`), plus `masks.png`, all five side by side. Without --weights the network
is the width-reduced VGG-19 with RANDOM weights: the pictures show where each style's
statistics go, not what a trained network would paint. Prints each region's distance to
each style's Gram (relu2_1, on the output's features) for both runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nstd.config import parse_config  # noqa: E402
from nstd.engine.features import VGGFeatures  # noqa: E402
from nstd.engine.losses import gram_matrix  # noqa: E402
from nstd.engine.stylizer import Stylizer  # noqa: E402
from nstd.engine.weights import load_vgg19_state_dict  # noqa: E402
from nstd.media.images import write_image  # noqa: E402
from nstd.testing.weights import write_random_vgg19  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def scene(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A photo-like scene (blue sky over a green-brown ground with a wavy horizon) and the
    sky mask (1, 1, h, w), 1 = sky."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    horizon = 0.55 + 0.06 * torch.sin(x * 9.0)
    sky = (y < horizon).float()
    sky_rgb = torch.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y])
    ground_rgb = torch.stack([0.35 + 0.2 * x, 0.45 - 0.1 * y, 0.2 + 0.1 * x])
    photo = sky * sky_rgb + (1 - sky) * ground_rgb
    return photo[None].clamp(0, 1), sky[None, None]


def styles(side: int) -> list[torch.Tensor]:
    """Two styles far apart: bold diagonal stripes in warm colours, and soft blue dots."""
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    stripes = ((x + y) % 12 < 6).float()
    warm = torch.stack([0.9 * stripes + 0.1, 0.5 * stripes + 0.1, 0.1 + 0 * stripes])
    dots = (((x % 10 - 5) ** 2 + (y % 10 - 5) ** 2) < 9).float()
    cool = torch.stack([0.2 + 0.6 * dots, 0.3 + 0.6 * dots, 0.5 + 0.5 * dots])
    return [warm[None], cool[None]]


def save(path: Path, image: torch.Tensor) -> None:
    array = image[0].permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    write_image(path, array.astype(np.float32), overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="160x120", help="WxH of the photo")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--weights", help="VGG-19 state dict (default: slim random)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "masks")
    args = parser.parse_args(argv)
    w, _, h = args.size.lower().partition("x")
    width, height = int(w), int(h or w)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nstd-masks-") as name:
        weights = args.weights or write_random_vgg19(Path(name) / "slim.pth", width_divisor=8)
        style = dataclasses.replace(parse_config({}).style, iterations=args.iterations,
                                    scales=(1.0,), tolerance=0.0)
        features = VGGFeatures(load_vgg19_state_dict(weights),
                               [style.content_layer, *style.style_layers])
        stylizer = Stylizer(features, style, torch.device("cpu"))
        photo, sky = scene(height, width)
        style_images = styles(64)
        before = stylizer.run(photo, stylizer.prepare_style(style_images, [1.0, 1.0]))
        after = stylizer.run(photo, stylizer.prepare_style(style_images, [1.0, 1.0],
                                                           [sky, 1.0 - sky]))
    for label, image in (("photo", photo), ("style_a", style_images[0]),
                         ("style_b", style_images[1]), ("mask_sky", sky),
                         ("mask_ground", 1.0 - sky), ("before", before.image),
                         ("after", after.image)):
        save(args.out / f"{label}.png", image)
    strip = [photo, torch.nn.functional.interpolate(style_images[0], size=(height, height)),
             torch.nn.functional.interpolate(style_images[1], size=(height, height)),
             before.image, after.image]
    save(args.out / "masks.png", torch.cat(strip, dim=3))
    layer = "relu2_1"
    own = [gram_matrix(stylizer.features(s)[layer]) for s in style_images]
    for label, result in (("before", before), ("after", after)):
        feats = stylizer.features(result.image)[layer]
        mask = torch.nn.functional.interpolate(sky, size=feats.shape[-2:], mode="area")
        for region, weight in (("sky", mask), ("ground", 1 - mask)):
            flat = feats[0].reshape(feats.shape[1], -1)
            m = weight.reshape(1, -1)
            gram = ((flat * m) @ flat.T / (flat.shape[0] * m.sum()))[None]
            distances = [float((gram - g).pow(2).mean()) for g in own]
            print(f"{label:>6} {region:>6}: distance to style a {distances[0]:.4g}, "
                  f"to style b {distances[1]:.4g}")
    print(f"wrote {args.out}/masks.png (photo | style a | style b | before | after)"
          f"{'' if args.weights else ' -- random weights'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

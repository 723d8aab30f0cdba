"""Regenerate styles/mosaic.png, the style image shipped with nstd (made by the project, CC0).

A Voronoi mosaic of saturated tiles with dark grout and a little brush-like noise: strong,
repetitive texture and colour statistics, which is what Gram-matrix style transfer picks up.
Run: python styles/make_mosaic.py
"""

from pathlib import Path

import cv2
import numpy as np


def make_mosaic(size: int = 512, tiles: int = 260, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, size, (tiles, 2)).astype(np.float32)
    palette = np.array([[0.85, 0.25, 0.15], [0.95, 0.75, 0.2], [0.15, 0.35, 0.75],
                        [0.1, 0.55, 0.45], [0.9, 0.9, 0.8], [0.5, 0.2, 0.5]], np.float32)
    colours = palette[rng.integers(0, len(palette), tiles)] * rng.uniform(0.75, 1.1, (tiles, 1))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = (xx[..., None] - centres[:, 0]) ** 2 + (yy[..., None] - centres[:, 1]) ** 2
    order = np.argsort(dist, axis=-1)[..., :2]
    nearest = np.take_along_axis(dist, order, axis=-1)
    image = colours[order[..., 0]]
    edge = np.sqrt(nearest[..., 1]) - np.sqrt(nearest[..., 0]) < 2.5
    image[edge] = 0.08
    image += rng.normal(0, 0.04, image.shape).astype(np.float32)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


if __name__ == "__main__":
    out = Path(__file__).with_name("mosaic.png")
    cv2.imwrite(str(out), cv2.cvtColor(make_mosaic(), cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")

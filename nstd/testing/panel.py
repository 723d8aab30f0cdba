"""A panel of (content, style) image pairs of clearly different character, made by code.

The optimizer's progress per network evaluation depends on the pair (a dark, sparse style and
a textured one differed 30x in the convergence issue), so convergence is always measured over
this whole panel, never on one pair. Every image is generated from a seed: no files, no
licences, the same pixels on every machine.

    images = make_image("dark_sparse", 64, 64)          # (1, 3, 64, 64) float32 in [0, 1]
    for pair in PANEL: content, style = pair.images(64)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (y, x) in [0, 1), shape (h, w) each."""
    return np.mgrid[0:h, 0:w].astype(np.float64) / np.array([h, w])[:, None, None]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random (cells x cells) grid, bicubic-ish upsampled. (h, w)."""
    coarse = torch.from_numpy(rng.random((1, 1, cells + 1, cells + 1)))
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic",
                                         align_corners=True)
    return up[0, 0].numpy()


def _fractal(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    total = np.zeros((h, w))
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * _smooth_noise(rng, h, w, 2 ** (o + 1))
        norm += amp
        amp *= 0.55
    return total / norm


def _hsv(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """HSV (each (h, w) in [0, 1]) -> RGB (h, w, 3) in [0, 1]."""
    i = np.floor(hue * 6) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    choices = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.zeros((*hue.shape, 3))
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        rgb[m] = np.stack([r[m], g[m], b[m]], axis=-1)
    return rgb


# --------------------------------------------------------------------------- generators
# Each takes (rng, h, w) and returns (h, w, 3) float in [0, 1].


def landscape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like scene: sky gradient, sun, hills, textured ground."""
    y, x = _grid(h, w)
    sky = np.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.9 - 0.1 * y], axis=-1)
    ridge = 0.55 + 0.08 * np.sin(x * 7 + rng.random() * 6) + 0.05 * np.sin(x * 17)
    ground = y > ridge
    tex = _fractal(rng, h, w)
    img = sky.copy()
    img[ground] = np.stack([0.2 + 0.25 * tex, 0.45 + 0.3 * tex, 0.15 + 0.1 * tex],
                           axis=-1)[ground]
    sun = (y - 0.25) ** 2 + (x - 0.72) ** 2 < 0.008
    img[sun] = [1.0, 0.93, 0.6]
    return img


def portrait(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A face-like shape: skin ellipse, eyes, hair, on a blurred background."""
    y, x = _grid(h, w)
    bg = _smooth_noise(rng, h, w, 3)[..., None] * np.array([0.3, 0.4, 0.5]) + 0.2
    img = bg.copy()
    face = ((x - 0.5) / 0.28) ** 2 + ((y - 0.55) / 0.36) ** 2 < 1
    img[face] = [0.85, 0.66, 0.55]
    hair = face & (y < 0.32)
    img[hair] = [0.25, 0.15, 0.08]
    for ex in (0.4, 0.6):
        eye = ((x - ex) / 0.05) ** 2 + ((y - 0.5) / 0.025) ** 2 < 1
        img[eye] = [0.1, 0.1, 0.15]
    mouth = (np.abs(y - 0.7) < 0.015) & (np.abs(x - 0.5) < 0.09)
    img[mouth] = [0.6, 0.2, 0.2]
    return img


def city(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Hard-edged buildings with lit windows against a dusk sky (high-frequency edges)."""
    y, x = _grid(h, w)
    img = np.stack([0.9 - 0.5 * y, 0.5 - 0.2 * y, 0.4 + 0.1 * y], axis=-1)
    left = 0.0
    while left < 1.0:
        width = 0.06 + 0.12 * rng.random()
        top = 0.25 + 0.5 * rng.random()
        shade = 0.1 + 0.2 * rng.random()
        block = (x >= left) & (x < left + width) & (y > top)
        img[block] = shade
        windows = block & (np.sin(x * 260) > 0.6) & (np.sin(y * 240) > 0.5)
        img[windows] = [0.95, 0.85, 0.4]
        left += width
    return img


def still_life(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Large smooth shaded spheres on a table: flat areas and soft gradients."""
    y, x = _grid(h, w)
    img = np.ones((h, w, 3)) * np.array([0.75, 0.72, 0.68])
    img[y > 0.65] = [0.45, 0.3, 0.2]
    for _ in range(3):
        cx, cy, r = 0.2 + 0.6 * rng.random(), 0.45 + 0.2 * rng.random(), 0.1 + 0.1 * rng.random()
        d2 = ((x - cx) ** 2 + (y - cy) ** 2) / r ** 2
        inside = d2 < 1
        colour = rng.random(3) * 0.7 + 0.2
        light = np.clip(1.1 - 0.6 * (((x - cx + 0.3 * r) ** 2 + (y - cy + 0.3 * r) ** 2)
                                     / r ** 2), 0.2, 1.0)
        img[inside] = (colour[None, :] * light[inside][:, None])
    return img


def dark_sparse(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Almost black with sparse bright specks and thin filaments (like a night sky)."""
    img = np.zeros((h, w, 3)) + 0.03
    n = max(4, h * w // 150)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    img[ys, xs] = rng.random((n, 3)) * 0.3 + 0.7
    y, x = _grid(h, w)
    filament = np.abs(np.sin(x * 9 + 4 * y) - 0.5 * np.cos(y * 5)) < 0.02
    img[filament] = [0.5, 0.45, 0.7]
    return img


def high_contrast(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Bold black and white zig-zag bands (op-art)."""
    y, x = _grid(h, w)
    v = (np.sin(x * 30 + 4 * np.abs(np.sin(y * 12))) > 0).astype(np.float64)
    return np.repeat(v[..., None], 3, axis=-1)


def flat_regions(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A few large flat colour cells (Voronoi), hard borders: a poster."""
    y, x = _grid(h, w)
    k = 7
    centres = rng.random((k, 2))
    colours = rng.random((k, 3))
    d = (y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2
    return colours[np.argmin(d, axis=-1)]


def fine_periodic(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A fine two-colour grating at a slant: period of ~3 pixels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    v = 0.5 + 0.5 * np.sin((xx * 0.8 + yy * 0.6) * 2 * math.pi / 3.0)
    a, b = np.array([0.9, 0.8, 0.2]), np.array([0.1, 0.2, 0.6])
    return v[..., None] * a + (1 - v[..., None]) * b


def noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Uniform independent colour noise."""
    return rng.random((h, w, 3))


def strokes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Thick curved brush strokes of a few colours over a canvas tone."""
    y, x = _grid(h, w)
    img = np.ones((h, w, 3)) * np.array([0.92, 0.88, 0.78])
    for _ in range(9):
        a, b, ph = rng.random() * 2 - 1, rng.random(), rng.random() * 6
        curve = b + 0.25 * np.sin(x * (2 + 3 * rng.random()) + ph) + a * (x - 0.5)
        band = np.abs(y - curve) < 0.035 + 0.04 * rng.random()
        img[band] = rng.random(3) * 0.8
    return img


def greyscale(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A grey pencil-like texture: hatching modulated by smooth noise, no colour at all."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    tone = _fractal(rng, h, w, 4)
    hatch = 0.5 + 0.5 * np.sin((xx + yy) * 0.9)
    v = np.clip(0.3 + 0.7 * tone - 0.35 * hatch * (tone < 0.55), 0, 1)
    return np.repeat(v[..., None], 3, axis=-1)


def saturated(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fully saturated swirling hues (psychedelic)."""
    y, x = _grid(h, w)
    hue = (np.arctan2(y - 0.5, x - 0.5) / (2 * math.pi) + 3 * np.hypot(y - 0.5, x - 0.5)
           + 0.2 * _smooth_noise(rng, h, w, 4)) % 1.0
    return _hsv(hue, np.ones_like(hue), np.ones_like(hue))


def stain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A multi-scale fractal stain texture in browns (watercolour paper)."""
    t = _fractal(rng, h, w, 6)
    t2 = _fractal(rng, h, w, 3)
    return np.stack([0.4 + 0.5 * t, 0.3 + 0.4 * t * t2, 0.15 + 0.3 * t2], axis=-1).clip(0, 1)


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    f.__name__: f for f in (landscape, portrait, city, still_life, dark_sparse, high_contrast,
                            flat_regions, fine_periodic, noise, strokes, greyscale, saturated,
                            stain)
}


def make_image(name: str, height: int, width: int, seed: int = 0) -> Tensor:
    """Generated image `name` -> (1, 3, height, width) float32 in [0, 1] (CPU)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown panel image {name!r}; choose from {sorted(GENERATORS)}")
    rng = np.random.default_rng(seed + sum(map(ord, name)))
    rgb = np.clip(GENERATORS[name](rng, height, width), 0.0, 1.0)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().contiguous()


@dataclass(frozen=True)
class Pair:
    content: str
    style: str

    @property
    def name(self) -> str:
        return f"{self.content}+{self.style}"

    def images(self, side: int) -> tuple[Tensor, Tensor]:
        """(content, style) at side x side, each (1, 3, side, side) float32 in [0, 1]."""
        return make_image(self.content, side, side), make_image(self.style, side, side, seed=1)


# Twelve pairs: four photo-like contents against eleven styles of different character
# (and one content used as a style), so no single kind of image decides the result.
PANEL: tuple[Pair, ...] = (
    Pair("landscape", "dark_sparse"),
    Pair("landscape", "stain"),
    Pair("portrait", "high_contrast"),
    Pair("portrait", "flat_regions"),
    Pair("city", "fine_periodic"),
    Pair("city", "noise"),
    Pair("still_life", "strokes"),
    Pair("still_life", "greyscale"),
    Pair("landscape", "saturated"),
    Pair("portrait", "dark_sparse"),
    Pair("city", "stain"),
    Pair("still_life", "city"),
)

# A smaller panel for the tests (one of each extreme).
SMALL_PANEL: tuple[Pair, ...] = (
    Pair("landscape", "dark_sparse"),
    Pair("portrait", "stain"),
    Pair("city", "high_contrast"),
)

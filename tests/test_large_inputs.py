"""Huge inputs without huge memory: JPEGs decoded reduced, other images shrunk as 8-bit.

The peak memory is measured in a fresh subprocess (the kernel's high-water mark, reset just
before the read), because the allocator keeps what a previous read freed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstd.media.images import read_image, resize_max_side

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from nstd.media.images import read_image, resize_max_side
from nstd.testing.rss import current_bytes, peak_bytes, reset_peak
path, side = sys.argv[1], sys.argv[2]
before = current_bytes()
reset_peak()
loaded = read_image(path, 60_000_000, max_side=None if side == "none" else int(side))
rgb = resize_max_side(loaded.rgb, 512)  # what the pipeline does next
print(json.dumps({"peak_mb": (peak_bytes() - before) / 2**20, "shape": list(rgb.shape)}))
"""


def photo(path: Path, width: int, height: int) -> Path:
    """A smooth photo-like JPEG: random colours at 1/16 of the size, enlarged by PIL (cheap
    to make even at 48 megapixels)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3))
    base = Image.fromarray(small.astype(np.uint8))
    base.resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def peak_mb(path: Path, side: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), side], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    return {"48mp": photo(folder / "48mp.jpg", 8000, 6000),
            "1mp": photo(folder / "1mp.jpg", 1200, 900)}


def test_a_48_megapixel_jpeg_at_512_costs_at_most_150_mb_more_than_a_1_megapixel_one(
        photos) -> None:
    small = peak_mb(photos["1mp"], "512")
    huge = peak_mb(photos["48mp"], "512")
    assert huge["shape"] == [384, 512, 3] and small["shape"] == [384, 512, 3]
    assert huge["peak_mb"] - small["peak_mb"] <= 150, (huge, small)
    # Without the reduced decode, the same file costs far more (the bound can fail).
    full = peak_mb(photos["48mp"], "none")
    assert full["peak_mb"] - small["peak_mb"] > 150, (full, small)


def test_reduced_decode_matches_a_full_decode_then_resize(tmp_path) -> None:
    path = photo(tmp_path / "p.jpg", 1600, 1200)
    reduced = read_image(path, 10_000_000, max_side=200)
    full = resize_max_side(read_image(path, 10_000_000).rgb, 200)
    assert reduced.rgb.shape == full.shape == (150, 200, 3)
    assert float(np.abs(reduced.rgb - full).mean()) < 0.01


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_is_shrunk_before_the_float_conversion(tmp_path, mode) -> None:
    y, x = np.mgrid[0:300, 0:400]
    rgb = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / "p.png"
    image.save(path)
    loaded = read_image(path, 1_000_000, max_side=100)
    reference = read_image(path, 1_000_000)
    assert loaded.rgb.shape == (75, 100, 3)
    expected = resize_max_side(reference.rgb, 100)
    assert float(np.abs(loaded.rgb - expected).mean()) < 0.02
    if mode == "RGBA":
        assert loaded.alpha is not None and loaded.alpha.shape == (75, 100)


def test_small_images_are_not_resized(tmp_path) -> None:
    path = photo(tmp_path / "s.jpg", 120, 90)
    assert read_image(path, 1_000_000, max_side=512).rgb.shape == (90, 120, 3)

"""Image input/output: every bad-input case, orientation, greyscale/alpha/16-bit, atomic writes."""

from __future__ import annotations

import errno
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from nstd.errors import InputError, OutputError, TransientError, UsageError
from nstd.media import files as fsutil
from nstd.media import images
from nstd.testing.media import crafted_png_header, truncate_file, write_test_image

MAX = 10_000_000


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    src = write_test_image(tmp_path / "a.png", size=(40, 30))
    loaded = images.read_image(src, MAX)
    assert loaded.rgb.shape == (30, 40, 3) and loaded.rgb.dtype == np.float32
    assert loaded.alpha is None and loaded.bits == 8
    assert 0.0 <= loaded.rgb.min() and loaded.rgb.max() <= 1.0
    expected = np.asarray(Image.open(src)).astype(np.float32) / 255.0
    np.testing.assert_allclose(loaded.rgb, expected, atol=1e-6)
    out = images.write_image(tmp_path / "b.png", loaded.rgb)
    np.testing.assert_allclose(images.read_image(out, MAX).rgb, loaded.rgb, atol=1e-6)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"])
def test_every_format_reads_and_writes(tmp_path: Path, ext: str) -> None:
    src = write_test_image(tmp_path / f"in{ext}", size=(32, 24))
    loaded = images.read_image(src, MAX)
    assert loaded.rgb.shape == (24, 32, 3)
    out = images.write_image(tmp_path / f"out{ext}", loaded.rgb)
    again = images.read_image(out, MAX)
    assert np.abs(again.rgb - loaded.rgb).mean() < 0.02


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.png is empty"):
        images.read_image(path, MAX)


def test_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(InputError, match=r"notes.png is not an image"):
        images.read_image(path, MAX)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        images.read_image(tmp_path / "nope.png", MAX)


def test_other_formats_are_not_probed(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    Image.new("RGB", (8, 8)).save(path, format="GIF")  # a GIF with a .png name
    with pytest.raises(InputError, match="not an image nstd can read"):
        images.read_image(path, MAX)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated(tmp_path: Path, ext: str) -> None:
    path = truncate_file(write_test_image(tmp_path / f"cut{ext}", size=(64, 48)), 0.5)
    with pytest.raises(InputError, match=r"truncated or corrupt"):
        images.read_image(path, MAX)


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(crafted_png_header(40000, 40000))
    assert path.stat().st_size < 200
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="bomb.png"):
            images.read_image(path, MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # 40000x40000 RGB would be 4.8 GB


def test_pixel_limit_from_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(crafted_png_header(5000, 4000))  # below PIL's own bomb limit
    with pytest.raises(InputError, match=r"5000x4000 = 20000000 pixels.*limits.max_pixels"):
        images.read_image(path, 1_000_000)


def test_unsupported_mode(tmp_path: Path) -> None:
    path = write_test_image(tmp_path / "float.tif", mode="F")
    with pytest.raises(InputError, match=r"colour mode 'F'"):
        images.read_image(path, MAX)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    path = write_test_image(
        tmp_path / f"o{orientation}.png", size=(20, 12), exif_orientation=orientation
    )
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(np.float32) / 255
    loaded = images.read_image(path, MAX)
    np.testing.assert_allclose(loaded.rgb, expected, atol=1e-6)
    swapped = orientation in (5, 6, 7, 8)
    assert loaded.rgb.shape[:2] == ((20, 12) if swapped else (12, 20))


def test_exif_orientation_jpeg(tmp_path: Path) -> None:
    path = write_test_image(tmp_path / "phone.jpg", size=(32, 16), exif_orientation=6)
    assert images.read_image(path, MAX).rgb.shape == (32, 16, 3)


def test_greyscale_is_replicated(tmp_path: Path) -> None:
    loaded = images.read_image(write_test_image(tmp_path / "g.png", mode="L"), MAX)
    assert loaded.rgb.shape[2] == 3 and loaded.alpha is None and loaded.bits == 8
    assert np.array_equal(loaded.rgb[..., 0], loaded.rgb[..., 1])
    assert np.array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])


def test_greyscale_alpha(tmp_path: Path) -> None:
    loaded = images.read_image(write_test_image(tmp_path / "la.png", mode="LA"), MAX)
    assert loaded.alpha is not None and loaded.alpha.shape == loaded.rgb.shape[:2]


def test_palette_and_cmyk(tmp_path: Path) -> None:
    pal = images.read_image(write_test_image(tmp_path / "p.png", mode="P"), MAX)
    assert pal.rgb.shape == (48, 64, 3) and pal.alpha is None
    cmyk = images.read_image(write_test_image(tmp_path / "c.jpg", mode="CMYK"), MAX)
    rgb = images.read_image(write_test_image(tmp_path / "c_rgb.png"), MAX)
    assert cmyk.rgb.shape == (48, 64, 3)
    assert np.abs(cmyk.rgb - rgb.rgb).mean() < 0.1  # CMYK converted, not inverted garbage


def test_rgba_alpha_round_trip(tmp_path: Path) -> None:
    loaded = images.read_image(write_test_image(tmp_path / "a.png", mode="RGBA"), MAX)
    assert loaded.alpha is not None and loaded.alpha.dtype == np.float32
    assert loaded.alpha[:, 0].max() < 0.01 and loaded.alpha[:, -1].min() > 0.99  # the ramp
    out = images.write_image(tmp_path / "out.png", loaded.rgb, loaded.alpha)
    again = images.read_image(out, MAX)
    np.testing.assert_allclose(again.alpha, loaded.alpha, atol=1e-6)
    # JPEG cannot store alpha: dropped, image still written.
    jpg = images.write_image(tmp_path / "out.jpg", loaded.rgb, loaded.alpha)
    assert images.read_image(jpg, MAX).alpha is None


def test_16bit_greyscale(tmp_path: Path) -> None:
    path = write_test_image(tmp_path / "g16.png", mode="I;16")
    raw = np.asarray(Image.open(path)).astype(np.float32) / 65535.0
    loaded = images.read_image(path, MAX)
    assert loaded.bits == 16
    np.testing.assert_allclose(loaded.rgb[..., 1], raw, atol=1e-6)
    # finer than 8 bits survives
    assert len(np.unique(loaded.rgb[..., 0])) > 256 or np.any(
        np.abs(loaded.rgb * 255 - np.round(loaded.rgb * 255)) > 1e-3
    )


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour(tmp_path: Path, ext: str) -> None:
    path = write_test_image(tmp_path / f"c16{ext}", mode="RGB;16", size=(24, 16))
    loaded = images.read_image(path, MAX)
    assert loaded.bits == 16 and loaded.rgb.shape == (16, 24, 3)
    from nstd.testing.media import smooth_texture

    np.testing.assert_allclose(loaded.rgb, smooth_texture(16, 24, seed=0), atol=2e-5)
    out = images.write_image(tmp_path / f"o16{ext}", loaded.rgb, bits=16)
    again = images.read_image(out, MAX)
    assert again.bits == 16
    np.testing.assert_allclose(again.rgb, loaded.rgb, atol=2e-5)


def test_write_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\.png"):
        images.write_image(tmp_path / "x.gif", np.zeros((4, 4, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_write_never_clobbers(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        images.write_image(target, np.zeros((4, 4, 3), np.float32))
    assert target.read_bytes() == b"precious"
    images.write_image(target, np.zeros((4, 4, 3), np.float32), overwrite=True)
    assert images.read_image(target, MAX).rgb.shape == (4, 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(tmp, final, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(fsutil, "publish", disk_full)
    with pytest.raises(TransientError, match="no space"):
        images.write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_write_accepts_uint8(tmp_path: Path) -> None:
    rgb = np.full((5, 6, 3), 200, np.uint8)
    out = images.write_image(tmp_path / "u.png", rgb)
    np.testing.assert_allclose(images.read_image(out, MAX).rgb, 200 / 255, atol=1e-6)


def test_resize_max_side() -> None:
    rgb = np.random.default_rng(0).random((30, 60, 3)).astype(np.float32)
    small = images.resize_max_side(rgb, 20)
    assert small.shape == (10, 20, 3) and small.dtype == np.float32
    assert images.resize_max_side(rgb, 100) is rgb  # never upscales unless asked
    big = images.resize_max_side(rgb, 120, allow_upscale=True)
    assert big.shape == (60, 120, 3) and 0.0 <= big.min() and big.max() <= 1.0
    assert images.resize_max_side(rgb, 60) is rgb
    grey = images.resize_max_side(np.ones((40, 10), np.float32), 8)
    assert grey.shape == (8, 2)
    single = images.resize_max_side(np.ones((40, 10, 1), np.float32), 8)
    assert single.shape == (8, 2, 1)
    u8 = images.resize_max_side(np.full((50, 50, 3), 7, np.uint8), 10)
    assert u8.dtype == np.uint8 and u8.shape == (10, 10, 3)
    tall = images.resize_max_side(np.ones((1000, 3, 3), np.float32), 10)
    assert tall.shape == (10, 1, 3)  # never zero-sized


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        images.read_image(fifo, MAX)

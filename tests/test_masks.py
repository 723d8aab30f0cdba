"""Spatial style masks (Gatys et al. 2017): each style's Gram over its own region.

Slim random VGG-19, tiny images: these check the mechanics, not how the pictures look.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nstd.cli.main import main
from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.losses import gram_matrix
from nstd.engine.stylizer import Stylizer
from nstd.engine.weights import load_vgg19_state_dict
from nstd.errors import UsageError

CPU = torch.device("cpu")


def rand(seed: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def stripes(h: int, w: int) -> torch.Tensor:
    """A high-contrast colour texture: a style far from smooth noise."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(x % 4 < 2).float(), (y % 6 < 3).float(),
                        ((x + y) % 8 < 4).float()])[None]


@pytest.fixture(scope="module")
def state(vgg_weights_path):
    return load_vgg19_state_dict(vgg_weights_path)


@pytest.fixture()
def make(state):
    def factory(tile_side=None, **overrides) -> Stylizer:
        defaults = {"iterations": 10, "scales": (1.0,), "min_scale_side": 16, "tolerance": 0.0}
        style = dataclasses.replace(parse_config({}).style, **{**defaults, **overrides})
        features = VGGFeatures(state, [style.content_layer, *style.style_layers])
        return Stylizer(features, style, CPU, tile_side=tile_side)

    return factory


def test_an_all_white_mask_equals_the_unmasked_result(make) -> None:
    content, style = rand(1, 48, 64), rand(2, 40, 40)
    stylizer = make()
    plain = stylizer.run(content, stylizer.prepare_style([style], [1.0]))
    white = torch.ones(1, 1, 24, 32)
    masked = stylizer.run(content, stylizer.prepare_style([style], [1.0], [white]))
    assert masked.initial_loss == pytest.approx(plain.initial_loss, rel=1e-5)
    assert masked.final_loss == pytest.approx(plain.final_loss, rel=1e-4)
    torch.testing.assert_close(masked.image, plain.image, atol=1e-3, rtol=0)


def test_a_two_region_mask_gives_each_region_its_own_styles_gram(make) -> None:
    """Style A on the left and B on the right, then the masks swapped: each half's Gram
    (measured on the output's features) is nearer its own style's in the run that gave it
    that style."""
    h, w = 48, 96
    styles = [stripes(48, 48), rand(3, 48, 48) * 0.2 + 0.4]  # bold texture / faint noise
    left = torch.zeros(1, 1, h, w)
    left[..., : w // 2] = 1.0
    stylizer = make(iterations=30, content_weight=0.0, tv_weight=0.0)
    start = rand(4, h, w) * 0.1 + 0.45
    outputs = []
    for masks in ([left, 1.0 - left], [1.0 - left, left]):
        outputs.append(stylizer.run(start, stylizer.prepare_style(styles, [1, 1], masks)).image)
    for layer in ("relu1_1", "relu2_1", "relu3_1", "relu4_1"):
        own = [gram_matrix(stylizer.features(s)[layer]) for s in styles]

        def distance(image, half: int, style: int, layer=layer, own=own) -> float:
            f = stylizer.features(image)[layer]
            cut = f.shape[-1] // 2
            region = f[..., :cut] if half == 0 else f[..., cut:]
            return float((gram_matrix(region) - own[style]).pow(2).mean())

        # Left half: style 0 in the first run, style 1 in the second; right half: reversed.
        assert distance(outputs[0], 0, 0) < distance(outputs[1], 0, 0), layer
        assert distance(outputs[1], 0, 1) < distance(outputs[0], 0, 1), layer
        assert distance(outputs[0], 1, 1) < distance(outputs[1], 1, 1), layer
        assert distance(outputs[1], 1, 0) < distance(outputs[0], 1, 0), layer


def test_masks_with_tiles_equal_masks_without(make) -> None:
    content, styles = rand(1, 70, 101), [rand(2, 40, 40), rand(3, 40, 40)]
    top = torch.zeros(1, 1, 70, 101)
    top[..., :30, :] = 1.0
    top[..., 30:40, :] = 0.5  # a grey band: both styles share it
    results = []
    for tile_side in (None, 16):
        stylizer = make(tile_side=tile_side, iterations=3)
        target = stylizer.prepare_style(styles, [1.0, 1.0], [top, 1.0 - top])
        results.append(stylizer.run(content, target))
    assert results[1].initial_loss == pytest.approx(results[0].initial_loss, rel=1e-5)
    assert results[1].final_loss == pytest.approx(results[0].final_loss, rel=1e-3)


def test_masks_work_with_coarse_to_fine(make) -> None:
    stylizer = make(scales=(0.5, 1.0), coarse_iterations=2, iterations=2)
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., :, :48] = 1
    target = stylizer.prepare_style([rand(2, 40, 40), rand(3, 40, 40)], [1, 1],
                                    [mask, 1 - mask])
    result = stylizer.run(rand(1, 64, 96), target)
    assert result.image.shape == (1, 3, 64, 96) and result.iterations == 4


def test_bad_masks_are_clear_errors(make) -> None:
    stylizer = make()
    style = rand(2, 40, 40)
    with pytest.raises(UsageError, match="style mask 1 is empty"):
        stylizer.prepare_style([style], [1.0], [torch.zeros(1, 1, 8, 8)])
    with pytest.raises(UsageError, match="1 style images but 2 style masks"):
        stylizer.prepare_style([style], [1.0], [torch.ones(1, 1, 8, 8)] * 2)
    target = stylizer.prepare_style([style], [1.0], [torch.ones(1, 1, 30, 30)])
    with pytest.raises(UsageError, match="style mask 1 is 30x30 but the image is 64x48; a mask "
                                         "must have the image's aspect ratio"):
        stylizer.run(rand(1, 48, 64), target)


def write(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_cli_style_masks(tmp_path, vgg_weights_path, capsys) -> None:
    content = write(tmp_path / "photo.png", (np.random.default_rng(0).random((40, 60, 3))
                                             * 255).astype(np.uint8))
    a = write(tmp_path / "a.png", np.full((32, 32, 3), 200, np.uint8))
    b = write(tmp_path / "b.png", np.full((32, 32, 3), 30, np.uint8))
    sky = np.zeros((20, 30), np.uint8)
    sky[:10] = 255
    sky_path, ground_path = write(tmp_path / "sky.png", sky), write(tmp_path / "ground.png",
                                                                   255 - sky)
    common = ["--weights", str(vgg_weights_path), "--device", "cpu", "--set",
              "style.iterations=2", "--set", "style.coarse_iterations=0"]
    out = tmp_path / "out.png"
    code = main(["stylize", str(content), "--style", str(a), "--style-mask", str(sky_path),
                 "--style", str(b), "--style-mask", str(ground_path), "-o", str(out), *common])
    assert code == 0 and out.is_file()
    code = main(["stylize", str(content), "--style", str(a), "--style-mask",
                 str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.png"), *common])
    assert code != 0 and "missing.png: no such file" in capsys.readouterr().err
    wide = write(tmp_path / "wide.png", np.full((10, 60), 255, np.uint8))
    code = main(["stylize", str(content), "--style", str(a), "--style-mask", str(wide),
                 "-o", str(tmp_path / "y.png"), *common])
    assert code != 0 and "aspect ratio" in capsys.readouterr().err
    code = main(["stylize", str(content), "--style", str(a), "--style", str(b),
                 "--style-mask", str(sky_path), "-o", str(tmp_path / "z.png"), *common])
    assert code != 0 and "one mask per style" in capsys.readouterr().err

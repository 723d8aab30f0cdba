"""Exact tiling: the tiled loss and gradient are the whole image's (Galerne et al. 2022).

Slim random VGG-19 (1/8 of the channels), tiny images; equality within float rounding.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nstd.config import parse_config
from nstd.engine.features import VGGFeatures
from nstd.engine.losses import gram_matrix
from nstd.engine.stylizer import Stylizer
from nstd.engine.tiled import (
    NetworkLoss,
    StyleRegion,
    tiled_features,
    tiled_grams,
    tiled_terms,
    whole_terms,
)
from nstd.engine.tiling import alignment, halo_pixels, plan_tiles, stride_of
from nstd.engine.weights import load_vgg19_state_dict

LAYERS = ("relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net(vgg_weights_path) -> VGGFeatures:
    return VGGFeatures(load_vgg19_state_dict(vgg_weights_path), LAYERS)


def rand(seed: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def loss_for(net: VGGFeatures, size: tuple[int, int], layers=LAYERS) -> NetworkLoss:
    content = net(rand(1, *size))[layers[0]]
    grams = {k: gram_matrix(v) for k, v in net(rand(2, 72, 88)).items() if k in layers[1:]}
    return NetworkLoss(layers[0], content, 1.0, {k: 1.0 for k in layers[1:]}, 1e6,
                       [StyleRegion(grams, None, 1.0)])


def value_and_grad(net, loss, x, tiles=None):
    x = x.clone().requires_grad_(True)
    content, style = (whole_terms(net, loss, x) if tiles is None
                      else tiled_terms(net, loss, x, tiles))
    (content + style).backward()
    return torch.stack([content, style]).detach(), x.grad


def test_halo_and_alignment_are_counted_per_layer() -> None:
    assert alignment(LAYERS) == 16 and halo_pixels(LAYERS) == 80
    assert alignment(["relu4_2"]) == 8 and halo_pixels(["relu4_2"]) == 40
    assert halo_pixels(["relu1_1"]) == 1 and halo_pixels(["relu2_1"]) == 4
    assert stride_of("relu1_1") == 1 and stride_of("pool1") == 2 and stride_of("relu5_1") == 16


@pytest.mark.parametrize("size", [(117, 203), (96, 160), (33, 250)])
def test_tiles_partition_every_layer(size) -> None:
    tiles = plan_tiles(size, 32, LAYERS)
    for stride in (1, 2, 4, 8, 16):
        count = torch.zeros(size[0] // stride, size[1] // stride, dtype=torch.int32)
        for tile in tiles:
            rows, cols, grows, gcols = tile.layer_slices(stride, size)
            count[grows, gcols] += 1
            box_h = (tile.box[1] - tile.box[0]) // stride
            assert rows.stop <= box_h
        assert bool((count == 1).all())
    for tile in tiles:
        for edge, limit in zip(tile.box, (size[0], size[0], size[1], size[1]), strict=True):
            assert edge % 16 == 0 or edge == limit


@pytest.mark.parametrize("size", [(117, 203), (100, 96), (64, 250)])
@pytest.mark.parametrize("core", [16, 48, 80])
def test_tiled_loss_and_gradient_equal_the_whole_image(net, size, core) -> None:
    loss = loss_for(net, size)
    x = rand(3, *size)
    tiles = plan_tiles(size, core, LAYERS)
    assert len(tiles) > 1
    whole, grad = value_and_grad(net, loss, x)
    tiled, tiled_grad = value_and_grad(net, loss, x, tiles)
    torch.testing.assert_close(tiled, whole, rtol=2e-5, atol=0)
    scale = grad.abs().max()
    assert float((tiled_grad - grad).abs().max() / scale) < 1e-4


def test_a_halo_one_step_too_narrow_is_not_exact(net) -> None:
    size = (117, 203)
    loss, x = loss_for(net, size), rand(3, *size)
    whole, grad = value_and_grad(net, loss, x)
    narrow = plan_tiles(size, 32, LAYERS, halo=halo_pixels(LAYERS) - 16)
    tiled, tiled_grad = value_and_grad(net, loss, x, narrow)
    assert float((tiled_grad - grad).abs().max() / grad.abs().max()) > 1e-3


def test_tiled_features_and_grams_equal_the_whole_image(net) -> None:
    size = (120, 181)
    x = rand(4, *size)
    tiles = plan_tiles(size, 32, LAYERS)
    feats = net(x)
    torch.testing.assert_close(tiled_features(net, x, "relu4_2", tiles), feats["relu4_2"],
                               rtol=1e-4, atol=1e-5)
    grams = tiled_grams(net, x, list(LAYERS[1:]), tiles)
    for layer in LAYERS[1:]:
        torch.testing.assert_close(grams[layer], gram_matrix(feats[layer]), rtol=1e-4,
                                   atol=1e-7)


@pytest.fixture()
def make(vgg_weights_path):
    state = load_vgg19_state_dict(vgg_weights_path)

    def factory(tile_side=None, **overrides) -> Stylizer:
        defaults = {"iterations": 4, "scales": (1.0,), "min_scale_side": 16, "tolerance": 0.0}
        style = dataclasses.replace(parse_config({}).style, **{**defaults, **overrides})
        features = VGGFeatures(state, [style.content_layer, *style.style_layers])
        return Stylizer(features, style, CPU, tile_side=tile_side)

    return factory


@pytest.mark.parametrize("preserve_color", [False, True])
def test_stylizer_tiled_run_matches_the_untiled_run(make, preserve_color) -> None:
    content, style = rand(5, 70, 101), rand(6, 64, 64)
    results = []
    for tile_side in (None, 16):
        stylizer = make(tile_side=tile_side, preserve_color=preserve_color)
        assert len(stylizer.tiles((70, 101))) == (1 if tile_side is None else 4 * 6)
        target = stylizer.prepare_style([style], [1.0])
        results.append(stylizer.run(content, target))
    whole, tiled = results
    assert tiled.initial_loss == pytest.approx(whole.initial_loss, rel=1e-5)
    assert tiled.final_loss == pytest.approx(whole.final_loss, rel=1e-3)
    assert tiled.final_loss < tiled.initial_loss
    torch.testing.assert_close(tiled.image, whole.image, atol=2e-3, rtol=0)


def test_coarse_to_fine_tiles_each_scale(make) -> None:
    stylizer = make(tile_side=16, scales=(0.5, 1.0), coarse_iterations=2, iterations=2)
    target = stylizer.prepare_style([rand(6, 64, 64)], [1.0])
    result = stylizer.run(rand(5, 96, 130), target)
    assert result.image.shape == (1, 3, 96, 130) and result.iterations == 4

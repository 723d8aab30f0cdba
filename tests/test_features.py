"""VGG-19 feature extractor: layer names, truncation, freezing, topology checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nstd.engine.features import VGG19_LAYERS, VGGFeatures, check_vgg19_state_dict, state_dict_key
from nstd.errors import ConfigError, WeightsError
from nstd.testing.weights import random_vgg19_state_dict


@pytest.fixture(scope="module")
def slim_state() -> dict[str, torch.Tensor]:
    return random_vgg19_state_dict(seed=0, width_divisor=8)


def test_layer_table_matches_torchvision_topology() -> None:
    from torchvision.models.vgg import cfgs

    kinds = []
    for entry in cfgs["E"]:  # VGG-19's configuration in torchvision
        kinds += ["pool"] if entry == "M" else ["conv", "relu"]
    assert [name.rstrip("0123456789_") for name in VGG19_LAYERS] == kinds
    assert VGG19_LAYERS.index("relu4_2") == 22
    assert state_dict_key("conv5_1", "weight") == "features.28.weight"
    assert VGG19_LAYERS[-1] == "pool5"


def test_outputs_match_torchvision_full_width(full_vgg_weights_path) -> None:
    """Same weights in torchvision's own VGG-19 `features` give the same activations."""
    from torchvision.models.vgg import cfgs, make_layers

    state = torch.load(full_vgg_weights_path, weights_only=True)
    reference = make_layers(cfgs["E"], batch_norm=False)
    reference.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                               if k.startswith("features.")})
    ours = VGGFeatures(state, ["relu3_1", "relu5_1"])
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference[:VGG19_LAYERS.index("relu5_1") + 1]((image - mean) / std)
        got = ours(image)
    torch.testing.assert_close(got["relu5_1"], expected, rtol=1e-4, atol=1e-5)


def test_returns_requested_layers_by_name(slim_state) -> None:
    net = VGGFeatures(slim_state, ["relu4_2", "conv4_2", "relu1_1", "pool2"])
    out = net(torch.rand(2, 3, 32, 40))
    assert set(out) == {"relu4_2", "conv4_2", "relu1_1", "pool2"}
    assert out["relu1_1"].shape == (2, 8, 32, 40)
    assert out["pool2"].shape == (2, 16, 8, 10)
    assert out["relu4_2"].shape == (2, 64, 4, 5)
    assert net.channels("relu4_2") == 64 and net.channels("pool2") == 16
    # The pre-activation survives its ReLU (no in-place overwrite when it is requested).
    assert (out["conv4_2"] < 0).any()
    torch.testing.assert_close(out["relu4_2"], out["conv4_2"].clamp(min=0))


def test_truncated_after_deepest_layer(slim_state) -> None:
    net = VGGFeatures(slim_state, ["relu2_1", "relu1_1"])
    names = [name for name, _ in net.net.named_children()]
    assert names == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1", "relu2_1"]
    assert net.deepest == "relu2_1"
    params = {name.split(".")[1] for name, _ in net.named_parameters()}
    assert params == {"conv1_1", "conv1_2", "conv2_1"}  # nothing beyond relu2_1 exists


def test_frozen_and_eval(slim_state) -> None:
    net = VGGFeatures(slim_state, ["relu3_1"])
    net.train()
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    net(image)["relu3_1"].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_normalizes_its_input(slim_state) -> None:
    net = VGGFeatures(slim_state, ["conv1_1"])
    image = torch.rand(1, 3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    conv.load_state_dict({"weight": slim_state["features.0.weight"],
                          "bias": slim_state["features.0.bias"]})
    with torch.no_grad():
        torch.testing.assert_close(net(image)["conv1_1"], conv((image - mean) / std))


def test_average_pooling(slim_state) -> None:
    net = VGGFeatures(slim_state, ["pool2"], pooling="avg")
    pools = [m for m in net.net if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert len(pools) == 2 and all(isinstance(m, nn.AvgPool2d) for m in pools)
    assert VGGFeatures(slim_state, ["relu5_1"]).min_side == 16


@pytest.mark.parametrize("layers, pooling", [(["relu9_9"], "max"), ([], "max"),
                                             (["relu1_1"], "median")])
def test_bad_layer_or_pooling_is_config_error(slim_state, layers, pooling) -> None:
    with pytest.raises(ConfigError):
        VGGFeatures(slim_state, layers, pooling=pooling)


def _broken(state: dict, key: str, value) -> dict:
    broken = dict(state)
    if value is None:
        del broken[key]
    else:
        broken[key] = value
    return broken


@pytest.mark.parametrize("key, value, expected", [
    ("features.5.weight", None, "missing key 'features.5.weight'"),
    ("features.0.weight", torch.zeros(8, 3, 5, 5), "3x3 convolution"),
    ("features.0.weight", torch.zeros(8, 1, 3, 3), "expected 3 (RGB)"),
    ("features.2.weight", torch.zeros(8, 4, 3, 3), "input channels"),
    ("features.2.bias", torch.zeros(3), "'features.2.bias'"),
    ("features.1.running_mean", torch.zeros(8), "unexpected key 'features.1.running_mean'"),
])
def test_topology_errors_name_the_key(slim_state, key, value, expected) -> None:
    with pytest.raises(WeightsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        VGGFeatures(_broken(slim_state, key, value), ["relu1_1"])


def test_check_reports_inferred_widths(slim_state) -> None:
    widths = check_vgg19_state_dict(slim_state, "test")
    assert widths["conv1_1"] == 8 and widths["conv5_4"] == 64

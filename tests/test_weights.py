"""Loading VGG-19 weights: local files, the torch hub cache, and every failure's message."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from nstd.engine import weights
from nstd.errors import WeightsError
from nstd.testing.weights import random_vgg19_state_dict, write_random_vgg19


@pytest.fixture()
def hub_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME, and no network: any download attempt fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def test_local_file_loads_features_only(vgg_weights_path) -> None:
    state = weights.load_vgg19_state_dict(vgg_weights_path)
    assert state and all(k.startswith("features.") for k in state)
    assert "classifier.0.weight" in torch.load(vgg_weights_path, weights_only=True)
    assert state["features.0.weight"].shape == (8, 3, 3, 3)


def test_state_dict_wrapper_accepted(tmp_path) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": random_vgg19_state_dict(width_divisor=16), "epoch": 3}, path)
    assert "features.34.weight" in weights.load_vgg19_state_dict(str(path))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"nope\.pth does not exist"):
        weights.load_vgg19_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint\x00\x01" * 10])
def test_garbage_file(tmp_path, content) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"garbage\.pth is not a PyTorch checkpoint"):
        weights.load_vgg19_state_dict(path)


def test_truncated_file(tmp_path, vgg_weights_path) -> None:
    path = tmp_path / "cut.pth"
    path.write_bytes(vgg_weights_path.read_bytes()[:5000])
    with pytest.raises(WeightsError,
                       match=r"cut\.pth is not a PyTorch checkpoint \(corrupt, truncated"):
        weights.load_vgg19_state_dict(path)


def test_pickled_object_is_refused_not_run(tmp_path) -> None:
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole model, not a state dict
    with pytest.raises(WeightsError, match=r"model\.pth"):
        weights.load_vgg19_state_dict(path)


def test_not_a_mapping(tmp_path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match=r"list\.pth does not hold a state dict"):
        weights.load_vgg19_state_dict(path)


def test_wrong_shapes_name_file_and_key(tmp_path) -> None:
    state = random_vgg19_state_dict(width_divisor=8)
    state["features.10.weight"] = torch.zeros(32, 16, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"odd\.pth: 'features\.10\.weight' \(conv3_1\)"):
        weights.load_vgg19_state_dict(path)


def test_vgg16_is_refused(tmp_path) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    path = tmp_path / "vgg16.pth"
    vgg16 = make_layers([c if c == "M" else max(1, c // 16) for c in cfgs["D"]])
    torch.save({f"features.{k}": v for k, v in vgg16.state_dict().items()}, path)
    with pytest.raises(WeightsError, match=r"vgg16\.pth"):
        weights.load_vgg19_state_dict(path)


def test_default_url_is_torchvisions() -> None:
    from torchvision.models import VGG19_Weights

    assert weights.DEFAULT_WEIGHTS_URL == VGG19_Weights.IMAGENET1K_V1.url


def test_default_uses_the_hub_cache(hub_home) -> None:
    cached = weights.default_weights_path()
    assert cached.parent == hub_home / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    write_random_vgg19(cached, width_divisor=16)
    assert "features.0.weight" in weights.load_vgg19_state_dict(None)  # no download tried
    assert "present" in weights.describe_weights(None)


def test_no_network_no_cache_says_how_to_fix(hub_home) -> None:
    with pytest.raises(WeightsError) as info:
        weights.load_vgg19_state_dict(None)
    message = str(info.value)
    assert "nstd weights fetch" in message and "model.weights" in message
    assert str(weights.default_weights_path()) in message
    assert "not cached" in weights.describe_weights(None)


def test_corrupt_cache_says_how_to_fix(hub_home) -> None:
    cached = weights.default_weights_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"partial download")
    with pytest.raises(WeightsError, match="nstd weights fetch"):
        weights.load_vgg19_state_dict(None)


def test_fetch_downloads_into_the_cache(hub_home, monkeypatch) -> None:
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        write_random_vgg19(dst, width_divisor=16)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = weights.fetch_weights()
    assert path == weights.default_weights_path() and path.is_file()
    assert calls == [(weights.DEFAULT_WEIGHTS_URL, "dcbb9e9d")]
    weights.fetch_weights()  # already cached: no second download
    assert len(calls) == 1


def test_describe_local_file(vgg_weights_path, tmp_path) -> None:
    assert "present" in weights.describe_weights(vgg_weights_path)
    assert "MISSING" in weights.describe_weights(tmp_path / "gone.pth")

"""Random VGG-19 weights for tests and benchmarks (never for images anyone looks at)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from nstd.engine.features import CONV_LAYERS, VGG19_WIDTHS, block_of, state_dict_key


def random_vgg19_state_dict(*, seed: int = 0, width_divisor: int = 1) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG-19 state dict with He-initialized random weights.

    He (Kaiming) normal weights keep the activations' scale roughly constant through the 16
    ReLU layers, so features and Grams neither vanish nor explode and losses behave like a
    real network's in tests. `width_divisor` divides every width (8 -> 8..64 channels): the
    same topology, much faster. A small fake `classifier.0.weight` proves that the loader
    ignores the classifier.
    """
    if width_divisor < 1:
        raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    in_channels = 3
    for layer in CONV_LAYERS:
        out_channels = max(1, VGG19_WIDTHS[block_of(layer) - 1] // width_divisor)
        std = math.sqrt(2.0 / (in_channels * 9))
        state[state_dict_key(layer, "weight")] = (
            torch.randn(out_channels, in_channels, 3, 3, generator=gen) * std
        )
        state[state_dict_key(layer, "bias")] = torch.randn(out_channels, generator=gen) * 0.01
        in_channels = out_channels
    state["classifier.0.weight"] = torch.randn(4, 8, generator=gen)
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def write_random_vgg19(path: str | os.PathLike[str], *, seed: int = 0,
                       width_divisor: int = 1) -> Path:
    """Save `random_vgg19_state_dict(...)` to `path` (torch.save) and return the path."""
    path = Path(path)
    torch.save(random_vgg19_state_dict(seed=seed, width_divisor=width_divisor), path)
    return path


def random_vgg19_file(folder: str | os.PathLike[str]) -> Path:
    """`folder/vgg19-random.pth` (full width, seed 0), written on first use and reused after:
    what the benchmarks run on when no real weights are given."""
    path = Path(folder) / "vgg19-random.pth"
    return path if path.exists() else write_random_vgg19(path, seed=0)

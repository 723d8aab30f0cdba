"""Shared fixtures: random VGG-19 weights written to a file and loaded through the real path."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def vgg_weights_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-reduced (1/8 channels) VGG-19 state dict with seeded random weights: fast tests."""
    from nstd.testing.weights import write_random_vgg19

    return write_random_vgg19(tmp_path_factory.mktemp("weights") / "vgg19-slim.pth",
                              seed=0, width_divisor=8)


@pytest.fixture(scope="session")
def full_vgg_weights_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full VGG-19 architecture with seeded random weights (about 80 MB on disk)."""
    from nstd.testing.weights import write_random_vgg19

    return write_random_vgg19(tmp_path_factory.mktemp("weights") / "vgg19-full.pth",
                              seed=0, width_divisor=1)

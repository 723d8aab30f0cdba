"""Shared fixtures: random VGG-19 weights written to a file and loaded through the real path.

A test that needs a daemon takes one of two, both in `nstd.testing`: `stepped.SteppedSite`, a
supervisor in this process stepped by hand on a fake clock (no torch, milliseconds a step),
or `site.Site`, a real `nstd run` subprocess (inotify, signals, kill -9, worker processes).
Each file is named for what it tests: test_ledger.py the ledger, test_daemon.py the stepped
daemon, test_daemon_e2e.py the same behaviour through a real process, and so on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch (OpenMP) thread for the tests and everything they start, unless the caller chose:
# on 2 cores shared with other work, two spin-waiting OpenMP threads made the in-process
# tests 20x slower (test_stylize + test_video_job: over 600 s with 2 threads, 31 s with 1,
# on the same loaded machine); the daemons' subprocesses already ran with 1 (testing/site.py).
# Set before torch is imported, so that its thread pool starts at this size.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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

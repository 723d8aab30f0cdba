"""Where the VGG-19 weights come from, and loading them safely.

Two sources:
- a local file (`model.weights` / `--weights`): a torchvision-layout VGG-19 state dict
  (`features.N.weight/bias`; `classifier.*` may be present and is dropped), optionally wrapped
  as `{"state_dict": ...}`. This is the way for offline machines.
- the default (`None`): torchvision's `VGG19_Weights.IMAGENET1K_V1`, in torch hub's standard
  cache (`$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`), downloaded
  once when missing.

Files are read with `torch.load(weights_only=True)`: a state dict is data, and a pickle from
an untrusted folder must not run code. Every failure is a `WeightsError` naming the file or
source and the way to fix it.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from nstd.engine.features import check_vgg19_state_dict
from nstd.errors import WeightsError, WeightsUnavailableError

log = logging.getLogger(__name__)

# torchvision.models.VGG19_Weights.IMAGENET1K_V1.url, spelled out so that describing the
# source does not import torchvision's model zoo; a test checks that both agree.
DEFAULT_WEIGHTS_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
DEFAULT_WEIGHTS_NAME = "torchvision VGG19_Weights.IMAGENET1K_V1"

_FIX_NO_NETWORK = (
    "without network, copy a VGG-19 weights file here: run `nstd weights fetch` on a machine "
    "with network and copy the file it names to {path}, or pass --weights PATH (any "
    "torchvision VGG-19 state dict; model.weights in config.yaml)"
)
_FIX_OFFLINE = (
    "run `nstd weights fetch` on a machine with network and copy the file to {path}, "
    "or set model.weights (--weights) to a local VGG-19 state dict"
)


def default_weights_path() -> Path:
    """Where torch hub caches the default weights (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / DEFAULT_WEIGHTS_URL.rsplit("/", 1)[-1]


def load_vgg19_state_dict(path: str | os.PathLike[str] | None) -> dict[str, Tensor]:
    """Load and check VGG-19 weights; return only the `features.*` tensors (float, CPU).

    `path` None: the default torchvision weights from the torch hub cache, downloaded there
    first if missing. Raises `WeightsError` (missing, unreadable, not a state dict, wrong
    shapes, or no network and no cached copy).
    """
    if path is None:
        file = default_weights_path()
        if not file.is_file():
            _download(file)
        source = f"cached {DEFAULT_WEIGHTS_NAME} weights {file}"
        hint = "; delete it and run `nstd weights fetch` again"
    else:
        file = Path(os.path.expanduser(os.fspath(path)))
        if not file.exists():
            raise WeightsError(f"weights file {file} does not exist; check model.weights "
                               "(--weights), or set it to null to use the torchvision weights")
        if not file.is_file():
            raise WeightsError(f"weights file {file} is not a file; point model.weights at a "
                               "VGG-19 state dict (.pth)")
        source = f"weights file {file}"
        hint = ""
    state = _read_state_dict(file, source, hint)
    check_vgg19_state_dict(state, source)
    return {k: v for k, v in state.items() if k.startswith("features.")}


def _read_state_dict(file: Path, source: str, hint: str) -> dict[str, Tensor]:
    if not _looks_like_torch_file(file):
        # Text, HTML from a failed download, a truncated zip: torch.load would report these as
        # unsupported pickle globals, which sends the user after the wrong problem.
        raise WeightsError(f"{source} is not a PyTorch checkpoint (corrupt, truncated or "
                           "another kind of file); download or copy it again, or point "
                           f"model.weights (--weights) at a VGG-19 state dict (.pth){hint}")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, EOF, Runtime...)
        text = str(exc).lower()
        if "weights only" in text and "global" in text:
            reason = ("it holds Python objects besides tensors, such as a whole model; "
                      "save model.state_dict() instead")
        else:
            reason = f"corrupt, truncated or not a PyTorch file: {type(exc).__name__}"
        raise WeightsError(f"{source} cannot be read as a PyTorch state dict "
                           f"({reason}){hint}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # training checkpoints often wrap the weights
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise WeightsError(f"{source} does not hold a state dict (a mapping of names to tensors)"
                           f"; save `model.state_dict()`, not the model{hint}")
    return data


def _looks_like_torch_file(file: Path) -> bool:
    """True for what torch.save writes: a zip archive (the default since torch 1.6) or a legacy
    pickle (first byte 0x80, the pickle PROTO opcode)."""
    try:
        with open(file, "rb") as stream:
            first = stream.read(1)
        return first == b"\x80" or zipfile.is_zipfile(file)
    except OSError:
        return True  # unreadable: let torch.load report it the usual way


def _download(file: Path) -> None:
    """Fetch the default weights into the torch hub cache (atomic: temp file then rename)."""
    match = re.search(r"-([a-f0-9]+)\.", file.name)
    log.info("downloading %s from %s to %s", DEFAULT_WEIGHTS_NAME, DEFAULT_WEIGHTS_URL, file)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights cache {file.parent} "
                           f"({exc.strerror or exc}); set $TORCH_HOME to a writable folder, or "
                           + _FIX_OFFLINE.format(path=file)) from None
    try:
        torch.hub.download_url_to_file(DEFAULT_WEIGHTS_URL, str(file),
                                       hash_prefix=match.group(1) if match else None,
                                       progress=False)
    except Exception as exc:  # URLError, HTTPError, OSError, hash mismatch (RuntimeError)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = f"cannot download {DEFAULT_WEIGHTS_NAME} from {DEFAULT_WEIGHTS_URL} ({reason[:120]})"
        if isinstance(exc, OSError):  # URLError, timeouts, refused connections: no network now
            # Said for a one-shot command (`nstd weights fetch`, `nstd stylize`): what to do
            # now. The daemon adds its own words (a later start tries again).
            raise WeightsUnavailableError(f"{what}; " + _FIX_NO_NETWORK.format(path=file)) \
                from None
        raise WeightsError(f"{what}; " + _FIX_OFFLINE.format(path=file)) from None


def describe_weights(path: str | os.PathLike[str] | None) -> str:
    """One line saying where the weights will come from and whether they are there."""
    if path is not None:
        file = Path(os.path.expanduser(os.fspath(path)))
        if file.is_file():
            return f"weights: local file {file} ({file.stat().st_size / 1e6:.1f} MB, present)"
        return f"weights: local file {file} (MISSING)"
    file = default_weights_path()
    if file.is_file():
        return (f"weights: {DEFAULT_WEIGHTS_NAME}, cached at {file} "
                f"({file.stat().st_size / 1e6:.1f} MB, present)")
    return (f"weights: {DEFAULT_WEIGHTS_NAME}, not cached yet; will be downloaded from "
            f"{DEFAULT_WEIGHTS_URL} to {file} on first use")


def fetch_weights() -> Path:
    """Download the default weights into the torch hub cache if missing, check them, return the
    cached file's path (copy it to `default_weights_path()` on an offline machine)."""
    file = default_weights_path()
    if not file.is_file():
        _download(file)
    load_vgg19_state_dict(None)
    return file

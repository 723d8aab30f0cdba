"""The checks `nstd run` makes before it starts, shared with `nstd check-config`.

The systemd steps use `nstd check-config` as the check before `systemctl start`, so it must
refuse exactly what `nstd run` refuses: folders that overlap, nest or cannot be written, a
missing styles folder or default style, a `model.weights` file that is not there. Neither
loads the network (no torch here: the supervisor never imports it); a weights file that exists
but is broken is found by the workers, or by `nstd weights`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from nstd.config import Config
from nstd.daemon.hooks import check_hooks
from nstd.daemon.supervisor import check_folders
from nstd.errors import ConfigError


def startup_checks(config: Config, source: str | None = None) -> None:
    """Raise `ConfigError` (exit 2) naming every key `nstd run` would refuse to start with.

    Creates missing daemon folders (except styles), as `nstd run` does: a folder that cannot
    be created is one of the problems reported.
    """
    check_folders(config, source=source)
    hook_problems = check_hooks(config)  # on_event found, Apprise installed (hooks.py)
    if config.daemon.cluster == "ray" and importlib.util.find_spec("ray") is None:
        hook_problems.append("daemon.cluster: ray needs the ray package; install it with "
                             "pip install 'nstd[ray]' (or set daemon.cluster: local)")
    if hook_problems:
        raise ConfigError(hook_problems, source=source)
    weights = config.model.weights
    if weights is not None and not Path(weights).is_file():
        what = "does not exist" if not os.path.lexists(weights) else "is not a file"
        raise ConfigError([f"model.weights: weights file {weights} {what}; fix model.weights "
                           "(--weights), or set it to null to download the torchvision "
                           "weights"], source=source)


def weights_note(config: Config) -> str:
    """One line for `nstd check-config`: where the workers will take the weights from."""
    if config.model.weights is not None:
        return f"weights: {config.model.weights} (present; `nstd weights` verifies it)"
    return ("weights: torchvision's VGG-19, downloaded into $TORCH_HOME at the first start "
            "unless cached (`nstd weights` shows where)")

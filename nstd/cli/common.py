"""What every sub-command shares: the config from the command line and logging (the stop flag
that SIGINT/SIGTERM set is `nstd.signals.StopFlag`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nstd.config import Config
from nstd.config_files import Override, load_config


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: list[Override] = list(args.overrides)
    if getattr(args, "weights", None):
        overrides.append((f"model.weights={json.dumps(str(Path(args.weights).absolute()))}",
                          f"--weights {args.weights}"))
    if getattr(args, "device", None):
        overrides.append((f"model.device={args.device}", f"--device {args.device}"))
    return load_config(args.config, overrides)


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

"""`nstd styles [--json]`: the style images and which inbox folder uses each."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add `styles` to the `nstd` parser."""
    p = subparsers.add_parser("styles", parents=[common_parent],
                              help="list the style images and the inbox folders using them")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_styles)


def cmd_styles(args: argparse.Namespace) -> int:
    from nstd.cli.common import config_from_args
    from nstd.daemon.stylelist import format_styles, list_styles

    config = config_from_args(args)
    styles, found, problems = list_styles(config)
    if args.json:
        print(json.dumps({"styles_folder": str(styles), "default_style":
                          config.daemon.default_style,
                          "styles": [s.as_dict() for s in found], "problems": problems},
                         sort_keys=True))
    else:
        print(format_styles(styles, found, problems))
    return 0

"""Command line: sub-commands, the object graph built once, errors mapped to exit codes.

Exit codes: 0 done, 2 usage or configuration error, 1 anything else. Errors are one line on
stderr; `--debug` adds the traceback. This is the only module that may end the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nstd.cli.common import config_from_args, setup_logging
from nstd.errors import ConfigError, NstdError, StaleFramesError, UsageError, WeightsError
from nstd.signals import StopFlag
from nstd.text import plural

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("nstd")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH",
                        help="config file (default: ./config.yaml if present, else built-in)")
    common.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. style.iterations=200")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")

    parser = argparse.ArgumentParser(prog="nstd", description="Neural style transfer daemon.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stylize", parents=[common], help="stylize one image or video")
    p.add_argument("content", type=Path, help="image or video to stylize")
    p.add_argument("--style", type=Path, action="append", required=True, metavar="STYLE",
                   help="style image (repeat to blend several)")
    p.add_argument("--style-weights", metavar="W1,W2", help="blend weights, one per --style")
    p.add_argument("--style-mask", type=Path, action="append", default=[], metavar="MASK",
                   help="greyscale mask of where the matching --style applies (white = this "
                        "style, grey = a share); one per --style, or none")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="output file (default: <stem>.<style>.<ext> next to the input)")
    p.add_argument("--weights", metavar="PATH", help="local VGG-19 state dict (model.weights)")
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N (model.device)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--restart", action="store_true",
                   help="video: discard stored frames instead of resuming")
    p.set_defaults(handler=cmd_stylize)

    p = sub.add_parser("check-config", parents=[common],
                       help="validate the configuration and make `nstd run`'s start-up checks")
    p.add_argument("--weights", metavar="PATH", help="local VGG-19 state dict (model.weights)")
    p.add_argument("--print-defaults", action="store_true",
                   help="print every key with its default and description (config.yaml) "
                        "instead of checking")
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser("weights", parents=[common], help="show or fetch the VGG-19 weights")
    p.add_argument("action", nargs="?", choices=["show", "fetch"], default="show")
    p.add_argument("--weights", metavar="PATH", help="local VGG-19 state dict (model.weights)")
    p.set_defaults(handler=cmd_weights)

    p = sub.add_parser("eval-temporal", parents=[common],
                       help="warping error E_warp of a stylized video against its source")
    p.add_argument("source", type=Path)
    p.add_argument("stylized", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval_temporal)

    add_daemon_commands(sub, common)
    return parser


def add_daemon_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`run`, `status`, `retry`, `styles`: registered only where the daemon modules are
    installed."""
    try:
        from nstd.cli import daemon as daemon_cli
        from nstd.cli import pause as pause_cli
        from nstd.cli import styles as styles_cli
    except ImportError:
        return
    daemon_cli.register(sub, common)
    styles_cli.register(sub, common)
    pause_cli.register(sub, common)


# --------------------------------------------------------------------------- helpers


def parse_blend(text: str | None, count: int) -> tuple[float, ...]:
    if text is None:
        return tuple([1.0 / count] * count)
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise UsageError(f"--style-weights {text!r}: expected numbers like 0.7,0.3") from None
    if len(weights) != count:
        raise UsageError(f"--style-weights gives {plural(len(weights), 'weight')} for "
                         f"{plural(count, 'style')}; "
                         "give one per --style")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError("--style-weights must be non-negative with a positive sum")
    return weights


def device_line(device: Any) -> str:
    """``cpu (2 threads)`` or ``cuda:0 (NVIDIA H200)``: what `nstd stylize` runs on."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({plural(torch.get_num_threads(), 'thread')})"


# --------------------------------------------------------------------------- commands


def cmd_stylize(args: argparse.Namespace) -> int:
    from nstd.engine.stylizer import build_stylizer
    from nstd.job import JobRequest
    from nstd.pipeline import default_output, media_kind, run_job
    from nstd.progress import ProgressPrinter

    config = config_from_args(args)
    for path in [args.content, *args.style, *args.style_mask]:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    media_kind(args.content)
    if args.style_mask and len(args.style_mask) != len(args.style):
        raise UsageError(f"{len(args.style)} --style but {len(args.style_mask)} --style-mask; "
                         "give one mask per style, or none")
    if args.style_mask and args.style_weights:
        raise UsageError("--style-weights blend styles everywhere and --style-mask gives each "
                         "style its own region; use one or the other")
    blend = parse_blend(args.style_weights, len(args.style))
    output = args.output or default_output(args.content, args.style)
    request = JobRequest(source=args.content, output=output, styles=tuple(args.style),
                         blend=blend, config=config, overwrite=args.overwrite,
                         restart=args.restart, masks=tuple(args.style_mask))
    stylizer = build_stylizer(config.model, config.style)
    print(f"device: {device_line(stylizer.device)}", file=sys.stderr)  # CPU runs are slow
    stop = StopFlag()
    stop.install()
    printer = ProgressPrinter(sys.stderr)
    try:
        report = run_job(request, stylizer, progress=printer, should_stop=stop)
    finally:
        printer.close()
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        log.info("wrote %s (loss %.4g -> %.4g, %s, %.1f s)", report.output,
                 report.initial_loss, report.final_loss, plural(report.iterations, "iteration"),
                 report.seconds)
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from nstd.daemon.startup import startup_checks, weights_note

    if args.print_defaults:  # the shipped config.yaml is this text
        from nstd.config_yaml import default_config_text

        sys.stdout.write(default_config_text())
        return EXIT_OK
    config = config_from_args(args)
    where = args.config or ("config.yaml" if Path("config.yaml").is_file() else "defaults")
    # what `nstd run` refuses, refused here too
    startup_checks(config, source=None if where == "defaults" else str(where))
    print(weights_note(config))
    print(f"{where}: OK")
    return EXIT_OK


def cmd_weights(args: argparse.Namespace) -> int:
    from nstd.engine import weights

    config = config_from_args(args)
    if args.action == "fetch":
        path = weights.fetch_weights()
        print(f"weights cached at {path}")
        return EXIT_OK
    print(weights.describe_weights(config.model.weights))
    if config.model.weights is None and not weights.default_weights_path().is_file():
        # `show` only looks: downloading is `fetch`'s job.
        raise WeightsError("the default weights are not downloaded yet; run `nstd weights "
                           "fetch` (or set model.weights to a local VGG-19 state dict)")
    weights.load_vgg19_state_dict(config.model.weights)
    print("verified: a complete VGG-19 state dict")
    return EXIT_OK


def cmd_eval_temporal(args: argparse.Namespace) -> int:
    from nstd.temporal.ewarp import evaluate_videos

    for path in (args.source, args.stylized):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    figures = evaluate_videos(args.source, args.stylized)
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(f"E_warp stylized {figures['ewarp']:.6f}  source {figures['source_ewarp']:.6f}  "
              f"({plural(figures['pairs'], 'frame pair')})")
    return EXIT_OK


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except ConfigError as exc:
        for line in exc.lines():
            print(f"nstd: config error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        hint = "; rerun with --restart to start over" if isinstance(exc, StaleFramesError) else ""
        print(f"nstd: {exc}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except NstdError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"nstd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("nstd: aborted", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # `nstd status | head`: the reader left, which is not an error. Point stdout at
        # devnull so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        # Exit 0: a reader that stops early (`| head -1`) is a normal end, and a script under
        # `set -o pipefail` must not see a failure.
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"nstd: internal error: {type(exc).__name__}: {exc} (rerun with --debug for "
              "details)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`nstd pause` and `nstd resume`: stop working by hand, and carry on.

Both only write or remove ``<daemon.state>/paused`` (`nstd.daemon.schedule`): they work
whether or not the daemon runs, and a pause lasts across restarts until `nstd resume`. The
daemon looks at the file at every loop (about once a second while a job runs, every
`nstd.daemon.schedule.MANUAL_POLL_SECONDS` while paused).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from nstd.errors import NstdError


def register(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add `pause` and `resume` to the `nstd` parser."""
    p = subparsers.add_parser(
        "pause", parents=[common_parent],
        help="pause the daemon: the running job stops after its current frame, nothing new "
             "starts (lasts until `nstd resume`, across restarts)")
    p.set_defaults(handler=cmd_pause)
    p = subparsers.add_parser("resume", parents=[common_parent],
                              help="undo `nstd pause` (daemon.active_hours still applies)")
    p.set_defaults(handler=cmd_resume)


def cmd_pause(args: argparse.Namespace) -> int:
    from nstd.cli.common import config_from_args
    from nstd.daemon.schedule import pause, pause_file

    config = config_from_args(args)
    try:
        fresh = pause(config.daemon.state, time.time())
    except OSError as exc:
        raise NstdError(f"cannot write {pause_file(config.daemon.state)} "
                        f"({exc.strerror or exc}); run as the daemon's user") from None
    if fresh:
        print("paused: the running job stops after its current frame (a video keeps its "
              "stored frames; an image starts over) and nothing new starts; "
              "`nstd resume` to continue")
    else:
        print("already paused; `nstd resume` to continue")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from nstd.cli.common import config_from_args
    from nstd.daemon.schedule import resume, schedule_state
    from nstd.hours import Window, parse_window

    config = config_from_args(args)
    try:
        was = resume(config.daemon.state)
    except OSError as exc:
        raise NstdError(f"cannot remove the pause file in {config.daemon.state} "
                        f"({exc.strerror or exc}); run as the daemon's user") from None
    hours = config.daemon.active_hours
    window: Window | None = parse_window(hours) if hours else None
    state = schedule_state(window, config.daemon.state, time.time())
    later = f", but daemon.active_hours is {hours}: work starts at {state['until']}" \
        if state["paused"] else ""
    print(("resumed" if was else "was not paused") + later)
    return 0

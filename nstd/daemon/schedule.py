"""When the daemon may work: `daemon.active_hours` and the manual pause of `nstd pause`.

    window = parse_window("22:00-07:00")      # nstd.hours: the syntax and its rules
    schedule_state(window, state_folder, time.time())
    # {"paused": True, "reason": "schedule", "until": "22:00"}

Decisions (why):
- The manual pause is a file, ``<daemon.state>/paused``: it survives restarts (a pause made
  before a reboot still holds after it), `nstd pause` works while the daemon is stopped, and
  the supervisor only needs one cheap ``stat`` per loop to see it. It wins over the schedule.

No torch here. The window's syntax (`Window`, `parse_window`) lives in `nstd.hours`, below
the daemon, because `nstd.config` validates ``active_hours`` with it; the supervisor and
`nstd status` both use `schedule_state`.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from nstd.hours import Window, parse_window

log = logging.getLogger(__name__)

PAUSE_FILENAME = "paused"


# --------------------------------------------------------------------------- manual pause


def pause_file(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / PAUSE_FILENAME


def is_paused(state_dir: str | os.PathLike[str]) -> bool:
    """True while ``<state>/paused`` exists (one stat)."""
    return os.path.lexists(pause_file(state_dir))


def pause(state_dir: str | os.PathLike[str], now: float) -> bool:
    """Write the pause file (temp + rename: never a half file). False if already paused."""
    path = pause_file(state_dir)
    if os.path.lexists(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PAUSE_FILENAME}.{os.getpid()}.tmp")
    tmp.write_text(f"paused by `nstd pause` at {datetime.fromtimestamp(now):%Y-%m-%d %H:%M:%S}"
                   "; `nstd resume` removes this file\n", encoding="utf-8")
    os.replace(tmp, path)
    return True


def resume(state_dir: str | os.PathLike[str]) -> bool:
    """Remove the pause file. False if it was not paused."""
    try:
        pause_file(state_dir).unlink()
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- the state


def schedule_state(window: Window | None, state_dir: str | os.PathLike[str],
                   now: float) -> dict[str, Any]:
    """``{"paused": bool, "reason": "manual"|"schedule"|None, "until": "HH:MM"|None}`` at
    epoch time ``now``. A manual pause has no "until": it lasts until `nstd resume`."""
    if is_paused(state_dir):
        return {"paused": True, "reason": "manual", "until": None}
    if window is not None and not window.is_active(datetime.fromtimestamp(now)):
        return {"paused": True, "reason": "schedule", "until": f"{window.start:%H:%M}"}
    return {"paused": False, "reason": None, "until": None}


def seconds_to_start(window: Window, now: float) -> float:
    """Seconds from epoch ``now`` until the window next opens (0 when inside it)."""
    local = datetime.fromtimestamp(now)
    if window.is_active(local):
        return 0.0
    return max(0.0, window.next_start(local).timestamp() - now)


def describe(state: dict[str, Any]) -> str | None:
    """The status line for a paused daemon, None when it works."""
    if not state.get("paused"):
        return None
    if state.get("reason") == "manual":
        return "paused (nstd pause); nstd resume to continue"
    return f"paused until {state.get('until')}"


# --------------------------------------------------------------------------- the gate

MANUAL_POLL_SECONDS = 1.0  # while paused by hand, the pause file is looked at this often


class WorkGate:
    """The supervisor's question at each loop: may work run now? It logs each change once.

    ``active_hours``: the config value (validated at parse); ``state_dir``: where the pause
    file lives.
    """

    def __init__(self, active_hours: str | None, state_dir: str | os.PathLike[str]) -> None:
        self.window = parse_window(active_hours) if active_hours else None
        self.state_dir = Path(state_dir)
        self._last: dict[str, Any] = {"paused": False, "reason": None, "until": None}

    def state(self, now: float) -> dict[str, Any]:
        """`schedule_state` at epoch ``now``."""
        return schedule_state(self.window, self.state_dir, now)

    def closed(self, now: float) -> bool:
        """True when nothing may run (outside the window, or paused by hand)."""
        state = self.state(now)
        if state != self._last:
            if state["paused"]:
                log.info("%s: the running job stops after its current frame (stored frames "
                         "kept; an image starts over), nothing new starts", describe(state))
            else:
                log.info("working again (%s)", "nstd resume" if self._last["reason"] == "manual"
                         else f"active_hours {self.window.label() if self.window else ''}")
            self._last = state
        return bool(state["paused"])

    def wait(self, now: float) -> float | None:
        """Seconds until the gate may open (for the idle wait), None when it is open."""
        reason = self._last.get("reason")
        if reason == "manual":
            return MANUAL_POLL_SECONDS
        if reason == "schedule" and self.window is not None:
            return max(0.05, seconds_to_start(self.window, now))
        return None

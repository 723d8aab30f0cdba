"""When the daemon may work: `daemon.active_hours` and the manual pause of `nstd pause`.

    window = parse_window("22:00-07:00")      # crosses midnight: 22:00 to 07:00 next morning
    window.is_active(datetime(2026, 1, 1, 23, 30))   # True
    window.next_start(datetime(2026, 1, 1, 8, 0))    # 2026-01-01 22:00
    schedule_state(window, state_folder, time.time())
    # {"paused": True, "reason": "schedule", "until": "22:00"}

Decisions (why):
- Times are the machine's local wall clock (what a person means by "22:00"); datetimes here
  are naive local times. On a daylight-saving change the window follows the wall clock.
- The start is inside the window, the end is not: "22:00-07:00" works from 22:00:00 up to
  06:59:59. A start equal to the end is refused at config parse: it could mean "always" or
  "never", and `null` already says "always".
- The manual pause is a file, ``<daemon.state>/paused``: it survives restarts (a pause made
  before a reboot still holds after it), `nstd pause` works while the daemon is stopped, and
  the supervisor only needs one cheap ``stat`` per loop to see it. It wins over the schedule.

No torch and no nstd imports here: `nstd.config` validates ``active_hours`` with
`parse_window`, and the supervisor and `nstd status` both use `schedule_state`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAUSE_FILENAME = "paused"
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """A daily work window from ``start`` (inclusive) to ``end`` (exclusive), local time.
    When ``end`` <= ``start`` the window crosses midnight."""

    start: time
    end: time

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def is_active(self, now_local: datetime) -> bool:
        """True when ``now_local`` (a naive local datetime) is inside the window."""
        t = now_local.time()
        if self.crosses_midnight:
            return t >= self.start or t < self.end
        return self.start <= t < self.end

    def next_start(self, now_local: datetime) -> datetime:
        """The next time (strictly after ``now_local``, or now when exactly at the start) the
        window opens: today's start if still ahead, else tomorrow's."""
        today = datetime.combine(now_local.date(), self.start)
        return today if today >= now_local else today + timedelta(days=1)

    def label(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    """``"HH:MM-HH:MM"`` -> `Window`. Raises ``ValueError`` with a message that says what to
    write instead (it is shown after the key's name)."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"must look like 22:00-07:00 (start-end, 24-hour clock), got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if not (h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60):
        raise ValueError(f"hours must be 00-23 and minutes 00-59, got {text!r}")
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise ValueError(f"start and end are the same ({text}); use null to work at all hours")
    return Window(start, end)


def check_window(value: Any) -> str | None:
    """The config rule for ``daemon.active_hours``: None when fine, else the problem."""
    if value is None:
        return None
    try:
        parse_window(value)
    except ValueError as exc:
        return str(exc)
    return None


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

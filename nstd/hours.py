"""The syntax of ``daemon.active_hours``: a daily work window such as ``"22:00-07:00"``.

    window = parse_window("22:00-07:00")      # crosses midnight: 22:00 to 07:00 next morning
    window.is_active(datetime(2026, 1, 1, 23, 30))   # True
    window.next_start(datetime(2026, 1, 1, 8, 0))    # 2026-01-01 22:00

A foundation module (no nstd imports): `nstd.config` checks the key with `check_window` when
it parses a config, and `nstd.daemon.schedule` (the work gate, `nstd pause`) uses the parsed
`Window`; the syntax has one owner below both.

Decisions (why):
- Times are the machine's local wall clock (what a person means by "22:00"); datetimes here
  are naive local times. On a daylight-saving change the window follows the wall clock.
- The start is inside the window, the end is not: "22:00-07:00" works from 22:00:00 up to
  06:59:59. A start equal to the end is refused at config parse: it could mean "always" or
  "never", and `null` already says "always".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

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

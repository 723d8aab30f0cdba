"""What the supervisor tells systemd: the STATUS= line and the watchdog ping.

`systemctl status nstd` shows the STATUS= line: what each busy worker is doing, or why
nothing is running (paused, waiting for disk space, idle), and the queue. WATCHDOG=1 is sent
on the supervisor's own timer, while its loop runs and every busy worker reports: a hung
worker is killed and restarted instead, and a hung loop gets the service restarted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from nstd.daemon.notify import SystemdNotifier, watchdog_interval
from nstd.daemon.slots import Slot

# WATCHDOG=1 every this fraction of watchdog_interval() (itself half of WatchdogSec): a loop
# woken late on a loaded machine still pings well within the interval.
PING_FRACTION = 0.5


def status_line(counts: Mapping[str, int], busy: list[Slot], paused: str | None,
                waiting: str | None = None) -> str:
    """``a.mp4: frame 3/10, ETA 1 min; 2 queued``, ``idle; 0 queued, 1 failed``,
    ``paused until 22:00; 3 queued`` or ``waiting for 812 MB free on /srv/work; 3 queued``.
    ``busy``: the slots running a job; ``paused``/``waiting``: why nothing new starts."""
    queued = f"{counts['queued']} queued"
    held = paused or waiting
    if held and not busy:
        return f"{held}; {queued}"
    if not busy:
        failed = f", {counts['failed']} failed" if counts["failed"] else ""
        return f"idle; {queued}{failed}"
    parts = [f"{slot.job.source}: {slot.where()}" for slot in busy if slot.job is not None]
    if waiting:
        parts.append(waiting)
    return f"{'; '.join(parts)}; {queued}"


class SystemdStatus:
    """The STATUS= line (sent when it changes) and the watchdog timer."""

    def __init__(self, notifier: SystemdNotifier) -> None:
        self.notifier = notifier
        self.every = watchdog_interval()
        self.last_ping = float("-inf")
        self._last_status = ""

    def ready(self, line: str, mono: float) -> None:
        self.notifier.ready(line)
        self.last_ping = mono

    def ping(self, mono: float, healthy: Callable[[], bool]) -> None:
        """WATCHDOG=1 when due and ``healthy()`` (every busy worker reported in time)."""
        if self.every is not None and mono - self.last_ping >= self.every * PING_FRACTION \
                and healthy():
            self.notifier.watchdog()
            self.last_ping = mono

    def next_ping(self, mono: float) -> float | None:
        """Seconds until the next ping is due (None: no watchdog)."""
        if self.every is None:
            return None
        return self.last_ping + self.every * PING_FRACTION - mono

    def update(self, line: Callable[[], str]) -> None:
        """Send the STATUS= line when it changed (built only when systemd listens)."""
        if not self.notifier.enabled:
            return
        text = line()
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)


def healthy(slots: Iterable[Slot], mono: float, stall_seconds: float) -> bool:
    """Every busy worker has reported within daemon.stall_seconds."""
    return all(mono - slot.heard <= stall_seconds for slot in slots if slot.state == "busy")

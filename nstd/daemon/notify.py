"""The systemd notify protocol, without dependencies.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). When the variable is
unset (not under systemd, ``Type=simple``) every call is a no-op. Sending never raises: a
service must not die because its supervisor's socket went away; the first failure is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` -> an AF_UNIX address, or None when unsupported."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace (Linux)
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 254's "vsock:CID:PORT": not needed on a host service


class SystemdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd. Safe to call from any thread."""

    def __init__(self, address: str | None) -> None:
        """``address``: an AF_UNIX datagram address (abstract names start with NUL), or None
        for a notifier that does nothing."""
        self.address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed_once = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier:
        """A notifier for ``$NOTIFY_SOCKET``; a no-op one when it is unset or unsupported."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        address = _socket_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET=%r is not supported; systemd will not be notified", value)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines. True if sent; False (never raises)."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)  # never stall the work loop on systemd
                self._sock.sendto(payload, self.address)
                return True
            except OSError as exc:
                if not self._failed_once:
                    self._failed_once = True
                    log.warning("cannot notify systemd at %r: %s (further failures not logged)",
                                os.fsdecode(self.address).replace("\0", "@"), exc)
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None  # reconnect next time: systemd may have restarted
                return False

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (weights loaded, the watch running)."""
        return self.send("READY=1", *([_status_line(status)] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.send(_status_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the work loop is alive."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1", *([_status_line(status)] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status_line(text: str) -> str:
    # The protocol is line-based: a newline would start a new (bogus) assignment.
    return "STATUS=" + " ".join(text.split("\n")).strip()


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled
    advises. None when the watchdog is off, malformed, or meant for another pid
    (``$WATCHDOG_PID``)."""
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000

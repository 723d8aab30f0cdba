"""One daemon per ledger: an exclusive ``flock`` on ``<ledger>.lock``."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from nstd.errors import NstdError


class DaemonLock:
    """An exclusive, non-blocking ``flock`` on ``<ledger>.lock``: one daemon per ledger.

    The kernel releases it when the process dies (kill -9 included), so no stale lock is
    ever left behind. Raises `NstdError` naming the holder's pid when already taken.
    """

    def __init__(self, ledger_file: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(ledger_file)}.lock")
        self._fd: int | None = None

    def acquire(self) -> DaemonLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise NstdError(
                f"another nstd daemon (pid {holder}) is already using {self.path.parent}; "
                "stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DaemonLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

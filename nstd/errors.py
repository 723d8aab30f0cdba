"""The errors a user can cause, each carrying one clear sentence.

`str(error)` is the message shown to the user: one line that names the thing to fix.
The CLI maps the classes to exit codes; the daemon maps them to job outcomes
(retry for `TransientError`, fail at once for everything else).
"""

from __future__ import annotations


class NstdError(Exception):
    """Base class: an error with a user-facing, one-line message."""


class ConfigError(NstdError):
    """The configuration (file, --set overrides or a sidecar) is invalid. Exit code 2.

    `problems` lists every bad key path with what is allowed, one string each.
    """

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))


class UsageError(NstdError):
    """The command line is wrong. Exit code 2."""


class InputError(NstdError):
    """An input file cannot be used (not an image/video, truncated, too large...). Permanent."""


class WeightsError(NstdError):
    """The VGG-19 weights cannot be found, downloaded or loaded."""


class OutputError(NstdError):
    """The output cannot be written (exists already, folder not writable...)."""


class TransientError(NstdError):
    """A failure worth retrying later (file briefly unreadable, disk full, out of memory)."""


class WeightsUnavailableError(WeightsError, TransientError):
    """The default weights cannot be downloaded right now (no network, server down). Exit 1:
    unlike a configuration error, starting again later (systemd restarts it) can succeed."""


class OutOfMemoryError(TransientError):
    """The device ran out of memory; retrying with a smaller memory budget (smaller tiles)
    may succeed."""


class Interrupted(NstdError):
    """Work was stopped on request (signal); anything resumable was kept."""

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

    `problems` lists every bad key path with what is allowed, one string each. `origins` says
    where each one was written (the config file, ``--set style.max_side=128``, ``sidecar
    clip.mp4.yaml``; None where a problem has no origin of its own), and `source` is the
    origin of those that have none. `lines()` joins each problem to its origin.
    """

    def __init__(self, problems: list[str] | str, source: str | None = None,
                 origins: list[str | None] | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        self.origins = list(origins) if origins is not None else [None] * len(self.problems)
        if len(self.origins) != len(self.problems):
            raise ValueError("ConfigError: one origin per problem")
        super().__init__("; ".join(self.lines()))

    def lines(self, default: str | None = None) -> list[str]:
        """``<origin>: <problem>`` for each problem; `default` where neither the problem nor
        the error knows its origin."""
        out = []
        for problem, origin in zip(self.problems, self.origins, strict=True):
            where = origin or self.source or default
            out.append(f"{where}: {problem}" if where else problem)
        return out

    def reason(self, default: str | None = None) -> str:
        """All problems as one line (a failed job's reason): ``<origin>: a; b`` when they
        share one origin, else each with its own."""
        wheres = {origin or self.source or default for origin in self.origins}
        if len(wheres) == 1 and (where := wheres.pop()):
            return f"{where}: " + "; ".join(self.problems)
        return "; ".join(self.lines(default))


class UsageError(NstdError):
    """The command line is wrong. Exit code 2."""


class StaleFramesError(UsageError):
    """A video's work folder holds frames made with other settings or input. The CLI refuses
    them (``--restart`` starts over); the daemon discards them (`JobRequest.replace_stale`)."""


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

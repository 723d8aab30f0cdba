"""Log lines that stay one line each: the filter the CLI and every worker process install.

It lives at the bottom of the layers because both `nstd run` (cli) and the worker processes
(daemon) install it on their handlers, and a daemon module must not reach up into the CLI.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with control characters escaped (a newline in a file name becomes ``\\n``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class OneLineFilter(logging.Filter):
    """Keeps one event on one log line: anyone who can write to the inbox chooses file names,
    and a name with a newline must not split a line or forge a fake one in the journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the handler's to report
            return True
        if _CONTROL.search(message):
            record.msg, record.args = one_line(message), None
        return True


def keep_one_line(logger: logging.Logger | None = None) -> None:
    """Install `OneLineFilter` on every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(OneLineFilter())

"""Tell someone: `daemon.on_event` commands and Apprise `daemon.notify_urls`.

    hooks = Hooks.from_config(config)        # the supervisor builds it once
    hooks.emit(Event("done", source="a.png", output="/out/a.mosaic.png", seconds=12.5))
    hooks.close(5.0)                          # at stop: let queued notifications go out

Events: ``done`` (a result was published and verified), ``failed`` (a job failed for good:
its source went to failed/; a file read as truncated waits in the inbox for 3 settle times
first, so its ``failed`` may come after ``queue-empty``), ``queue-empty`` (the last queued
job ended and nothing else is queued or running), ``disk-low`` (a job waits for disk space:
once per shortage, `nstd.daemon.space`). The command gets them in its environment:

    NSTD_EVENT    done | failed | queue-empty | disk-low
    NSTD_SOURCE   the source, relative to the inbox ("" for queue-empty and disk-low)
    NSTD_OUTPUT   the published result's path ("" unless done)
    NSTD_REASON   why it failed; disk-low: "waiting for N MB free on <path>"
    NSTD_SECONDS  done/failed: seconds from the job's last start to its end; queue-empty:
                  seconds since the queue started to work (one decimal)

Decisions (why):
- One background thread runs them, in order: the supervisor loop never waits for a command or
  a mail server, and two events never race each other. A command runs without a shell
  (`shlex.split` of a string, or a list as given): file names come from whoever can write to
  the inbox and must never be parsed as shell syntax (they are only ever in the environment).
- A command that fails, cannot start or runs past `daemon.on_event_timeout` (it is killed) is
  logged, with its output, and nothing else happens: a notification never fails a job.
- Apprise is optional (``pip install 'nstd[notify]'``) and imported only when URLs are set;
  `check_hooks` (a start-up check, also made by `nstd check-config`) refuses to start without
  it rather than dropping the notifications silently.

No torch here: the supervisor imports this module.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nstd.config import Config

log = logging.getLogger(__name__)

EVENTS = ("done", "failed", "queue-empty", "disk-low")
OUTPUT_LOG_CHARS = 2000  # of a command's output, in the log
CLOSE_SECONDS = 5.0  # at stop, queued notifications get this long to go out
_STOP = object()


@dataclass(frozen=True)
class Event:
    """What happened. ``seconds`` as described in the module docstring."""

    kind: str  # one of EVENTS
    source: str = ""
    output: str = ""
    reason: str = ""
    seconds: float | None = None

    def environment(self) -> dict[str, str]:
        return {"NSTD_EVENT": self.kind, "NSTD_SOURCE": self.source,
                "NSTD_OUTPUT": self.output, "NSTD_REASON": self.reason,
                "NSTD_SECONDS": "" if self.seconds is None else f"{self.seconds:.1f}"}

    def title(self) -> str:
        if self.kind == "queue-empty":
            return "nstd: all done"
        if self.kind == "disk-low":
            return "nstd: disk space low"
        return f"nstd: {self.kind} {self.source}"

    def body(self) -> str:
        took = f" after {self.seconds:.0f} s" if self.seconds is not None else ""
        if self.kind == "done":
            return f"{self.source} -> {self.output}{took}"
        if self.kind == "failed":
            return f"{self.source} failed{took}: {self.reason}"
        if self.kind == "disk-low":
            return self.reason
        return f"the queue is empty{took}"


def command_argv(value: str | Sequence[str] | None) -> list[str] | None:
    """``daemon.on_event`` as an argv list (None: no command). Raises ValueError for a string
    with unbalanced quotes."""
    if value is None:
        return None
    argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return argv or None


def check_hooks(config: Config) -> list[str]:
    """Problems `nstd run` refuses to start with (each names its key): an ``on_event``
    command that cannot be split or found, Apprise URLs without Apprise, or that Apprise
    does not understand."""
    d = config.daemon
    problems: list[str] = []
    try:
        argv = command_argv(d.on_event)
    except ValueError as exc:
        problems.append(f"daemon.on_event: cannot split {d.on_event!r} into words ({exc}); "
                        "check its quotes, or give a list")
        argv = None
    if argv is not None and shutil.which(argv[0]) is None:
        problems.append(f"daemon.on_event: command {argv[0]!r} not found; give its full path "
                        "(and make it executable)")
    if d.notify_urls:
        try:
            import apprise
        except ImportError:
            problems.append("daemon.notify_urls: Apprise is not installed; "
                            "pip install 'nstd[notify]' (or set daemon.notify_urls: [])")
        else:
            for url in d.notify_urls:
                if not apprise.Apprise().add(url):
                    problems.append(f"daemon.notify_urls: Apprise does not understand "
                                    f"{_redact(url)}; see its URL list for the service")
    return problems


def _redact(url: str) -> str:
    """The URL's scheme only: URLs carry passwords and tokens, which must not reach a log."""
    return url.split("://", 1)[0] + "://..." if "://" in url else "(a URL without ://)"


class Hooks:
    """Runs the command and sends the Apprise notifications for each `emit`ted event, on
    one background thread (started at the first event). Safe to call from any thread."""

    def __init__(self, command: list[str] | None = None, timeout: float = 30.0,
                 urls: Sequence[str] = ()) -> None:
        self.command = command
        self.timeout = timeout
        self._apprise: Any = None
        if urls:
            import apprise  # present: `check_hooks` ran at start-up

            self._apprise = apprise.Apprise()
            for url in urls:
                self._apprise.add(url)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> Hooks:
        d = config.daemon
        return cls(command_argv(d.on_event), d.on_event_timeout, d.notify_urls)

    @property
    def enabled(self) -> bool:
        return self.command is not None or self._apprise is not None

    def emit(self, event: Event) -> None:
        """Queue ``event`` for the background thread; returns at once."""
        if not self.enabled:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nstd-hooks",
                                                daemon=True)
                self._thread.start()
        self._queue.put(event)

    def close(self, timeout: float = CLOSE_SECONDS) -> bool:
        """Let queued events go out for up to ``timeout`` seconds, then stop the thread.
        True when everything was sent (or there was nothing)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("on_event/notify_urls: notifications still running after %.0f s at "
                        "stop; not waiting for them", timeout)
            return False
        return True

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is _STOP:
                return
            try:
                if self.command is not None:
                    self._run_command(event)
                if self._apprise is not None:
                    self._notify(event)
            except Exception as exc:  # noqa: BLE001 - a notification must never end nstd
                log.warning("on_event: %s: unexpected %s: %s", event.kind,
                            type(exc).__name__, exc)

    def _run_command(self, event: Event) -> None:
        assert self.command is not None
        env = {**os.environ, **event.environment()}
        name = self.command[0]
        try:
            done = subprocess.run(self.command, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            log.warning("on_event %s (%s %s): killed after %g s (daemon.on_event_timeout)%s",
                        name, event.kind, event.source, self.timeout, _output(exc.stdout,
                                                                               exc.stderr))
            return
        except OSError as exc:
            log.warning("on_event %s (%s %s): cannot run it: %s", name, event.kind,
                        event.source, exc.strerror or exc)
            return
        output = _output(done.stdout, done.stderr)
        if done.returncode != 0:
            log.warning("on_event %s (%s %s): exit status %d%s", name, event.kind,
                        event.source, done.returncode, output)
        else:
            log.info("on_event %s (%s %s): ok%s", name, event.kind, event.source, output)

    def _notify(self, event: Event) -> None:
        if not self._apprise.notify(title=event.title(), body=event.body()):
            log.warning("notify_urls: %s %s: not delivered to every URL (Apprise's log above "
                        "says why)", event.kind, event.source)


def _output(stdout: bytes | str | None, stderr: bytes | str | None) -> str:
    """``: <output>`` for a log line (both streams, decoded, trimmed), or "" when silent."""
    parts = []
    for stream in (stdout, stderr):
        if stream:
            text = stream.decode("utf-8", "replace") if isinstance(stream, bytes) else stream
            parts.append(text.strip())
    text = " | ".join(p for p in parts if p)
    if len(text) > OUTPUT_LOG_CHARS:
        text = text[:OUTPUT_LOG_CHARS] + "..."
    return f": {text}" if text else ""

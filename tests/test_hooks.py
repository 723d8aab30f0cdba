"""Notifications: `daemon.on_event` commands and Apprise `daemon.notify_urls` (nstd.daemon.hooks).

Commands are tiny `sh` scripts writing their environment to a file; Apprise posts to a
`json://` URL served by a local HTTP server inside the test (no network).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from nstd.cli.main import main
from nstd.config import parse_config
from nstd.daemon.hooks import Event, Hooks, check_hooks
from nstd.errors import InputError, NstdError
from nstd.testing.stepped import SteppedSite

RECORD = ('printf "%s|%s|%s|%s|%s\\n" "$NSTD_EVENT" "$NSTD_SOURCE" "$NSTD_OUTPUT" '
          '"$NSTD_REASON" "$NSTD_SECONDS" >> "$0"')


def recorder(path: Path) -> list[str]:
    """An on_event command (a list: no shell parsing of names) appending one line per event."""
    return ["sh", "-c", RECORD, str(path)]


def lines(path: Path) -> list[list[str]]:
    return [line.split("|") for line in path.read_text().splitlines()] if path.exists() else []


def test_the_command_gets_the_event_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "events.txt"
    hooks = Hooks(recorder(out), timeout=10)
    hooks.emit(Event("done", "sub/a b.png", "/out/a b.mosaic.png", "", 12.25))
    hooks.emit(Event("failed", "c.mp4", "", "c.mp4 is truncated", 3.0))
    assert hooks.close(10)
    assert lines(out) == [["done", "sub/a b.png", "/out/a b.mosaic.png", "", "12.2"],
                          ["failed", "c.mp4", "", "c.mp4 is truncated", "3.0"]]


def test_a_failing_or_hanging_command_is_logged_and_never_blocks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nstd.daemon.hooks")
    hooks = Hooks(["sh", "-c", 'echo "no mail today" >&2; exit 3'], timeout=10)
    hooks.emit(Event("done", "a.png"))
    assert hooks.close(10)
    assert "exit status 3: no mail today" in caplog.text
    slow = Hooks(["sleep", "30"], timeout=0.3)
    started = time.monotonic()
    slow.emit(Event("done", "a.png"))
    assert time.monotonic() - started < 0.1  # queued for the hook thread, not run here
    assert slow.close(10)
    assert time.monotonic() - started < 5  # killed at the timeout, not after 30 s
    assert "killed after 0.3 s (daemon.on_event_timeout)" in caplog.text
    missing = Hooks([str(tmp_path / "gone")], timeout=1)
    missing.emit(Event("done", "a.png"))
    assert missing.close(10) and "cannot run it" in caplog.text


def test_the_daemon_reports_done_failed_and_queue_empty_and_a_bad_hook_fails_no_job(
        tmp_path: Path) -> None:
    out = tmp_path / "events.txt"
    # The hook records the event, then fails: the job's outcome must not change.
    site = SteppedSite(tmp_path, on_event=["sh", "-c", RECORD + "; exit 1", str(out)])

    def fail(request: Any, _: dict[str, Any]) -> None:
        if request.source.name == "bad.png":
            raise NstdError("bad.png: the style cannot be applied")
        if request.source.name == "torn.png":
            raise InputError("torn.png is truncated or corrupt")

    site.runner.action = fail
    site.clock.t = 1_000.0
    site.start()
    site.queue_files("good.png", "bad.png", "torn.png")
    while site.step(0.5):
        pass
    # A file read as truncated stays in the inbox for 3 settle times (a copy that paused?):
    # it is announced when it goes to failed/.
    site.step(3 * site.settle_seconds + 0.1)
    assert site.daemon.hooks.close(10)
    done, bad, empty, torn = lines(out)
    assert done[:2] == ["done", "good.png"] and done[2].endswith("good.mosaic.png")
    assert bad[:3] == ["failed", "bad.png", ""] and "cannot be applied" in bad[3]
    assert empty[:4] == ["queue-empty", "", "", ""] and float(empty[4]) >= 0
    assert torn[:2] == ["failed", "torn.png"] and "truncated" in torn[3]
    assert site.ledger.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 2}


# --------------------------------------------------------------------------- Apprise


class _Inbox(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_apprise_urls_are_notified(tmp_path: Path) -> None:
    pytest.importorskip("apprise")  # the test extra installs it: nstd[test] -> apprise
    _Inbox.received = []
    server = HTTPServer(("127.0.0.1", 0), _Inbox)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"json://127.0.0.1:{server.server_address[1]}/nstd"
        config = parse_config({"daemon": {"notify_urls": [url]}})
        assert check_hooks(config) == []
        hooks = Hooks.from_config(config)
        hooks.emit(Event("failed", "a.png", "", "a.png is truncated", 2.0))
        assert hooks.close(10)
    finally:
        server.shutdown()
        server.server_close()
    (message,) = _Inbox.received
    assert message["title"] == "nstd: failed a.png"
    assert message["message"] == "a.png failed after 2 s: a.png is truncated"


def test_start_up_refuses_urls_without_apprise_and_a_command_that_is_not_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    site = SteppedSite(tmp_path, notify_urls=["json://localhost"])
    monkeypatch.setitem(sys.modules, "apprise", None)  # `import apprise` fails
    config = parse_config({"daemon": {"notify_urls": ["json://localhost"],
                                      "on_event": "no-such-nstd-hook --flag"}})
    problems = check_hooks(config)
    assert problems == [
        "daemon.on_event: command 'no-such-nstd-hook' not found; give its full path "
        "(and make it executable)",
        "daemon.notify_urls: Apprise is not installed; pip install 'nstd[notify]' "
        "(or set daemon.notify_urls: [])"]
    assert main(["check-config", "--config", str(site.config_file())]) == 2
    assert "pip install 'nstd[notify]'" in capsys.readouterr().err


def test_on_event_is_a_string_or_a_list_and_notify_urls_defaults_to_none() -> None:
    d = parse_config({"daemon": {"on_event": ["notify", "x"]}}).daemon
    assert d.on_event == ("notify", "x") and d.notify_urls == () and d.on_event_timeout == 30
    assert parse_config({"daemon": {"on_event": "notify-send nstd"}}).daemon.on_event == \
        "notify-send nstd"
    assert check_hooks(parse_config({"daemon": {"on_event": "sh -c 'unbalanced"}}))[0] \
        .startswith("daemon.on_event: cannot split")

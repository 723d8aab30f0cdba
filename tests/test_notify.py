"""The systemd notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nstd.daemon.notify import SystemdNotifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert received(sock) == "READY=1"
    assert notifier.status("queued 3, running clip.mp4\nframe 12/240")
    assert received(sock) == "STATUS=queued 3, running clip.mp4 frame 12/240"  # one line
    assert notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    assert notifier.ready(status="idle")
    assert received(sock) == "READY=1\nSTATUS=idle"
    assert notifier.stopping()
    assert received(sock) == "STOPPING=1"
    notifier.close()


def test_abstract_socket_name() -> None:
    name = f"nstd-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"
    finally:
        sock.close()


def test_unset_is_a_silent_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_unsupported_address_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nstd.daemon.notify"):
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and notifier.ready() is False
    assert "not supported" in caplog.text


def test_missing_socket_never_raises_and_logs_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        listener: tuple[socket.socket, str]) -> None:
    gone = str(tmp_path / "gone.sock")
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": gone})
    with caplog.at_level(logging.WARNING, logger="nstd.daemon.notify"):
        for _ in range(5):
            assert notifier.watchdog() is False
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1
    # When the socket comes back (systemd restarted), sending works again.
    sock, path = listener
    notifier.address = path
    assert notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "120000000"}) == 60.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None

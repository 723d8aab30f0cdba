"""The syntax of ``daemon.http`` (``HOST:PORT``) and the rule that only loopback may go
without a token.

A foundation module (no nstd imports): `nstd.config` refuses a bad address or a missing token
when it parses a config, and the status page's server (`nstd.web.server`) binds what
`parse_bind` returns; the syntax has one owner below both.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost",)


def parse_bind(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8765"`` / ``"[::1]:8765"`` / ``":8765"`` -> (host, port); raises ValueError.

    Port 0 asks the system for a free port (the tests use it; the bound address is written to
    ``<state>/http.json``).
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8765, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; an empty host means every interface."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve to anything


def check_http(value: str | None, token: str | None) -> str | None:
    """The one problem with ``daemon.http`` / ``daemon.http_token``, or None."""
    if value is None:
        return None
    try:
        host, _ = parse_bind(value)
    except ValueError as exc:
        return f"daemon.http: {exc}"
    if token is not None and not token.strip():
        return "daemon.http_token: must not be empty; use null for no token (loopback only)"
    if not is_loopback(host) and token is None:
        return (f"daemon.http: {value} is reachable from other machines; set "
                "daemon.http_token (every request then needs it) or bind to 127.0.0.1")
    return None

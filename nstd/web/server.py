"""The ``daemon.http`` listener: the status page, its JSON, images and ``/metrics``.

    server = StatusServer.start(config, supervisor)   # a daemon thread; None when http: null
    server.url                                        # the bound address (port 0: chosen)
    server.close()

Routes (ids are ledger job ids; nothing else in a URL names a file, so ``/../`` and absolute
paths simply match no route: 404):

    /                       the page          /api/status.json   its data (+ sections' HTML)
    /metrics                Prometheus        /job/<id>          a finished job
    /preview/<id>.jpg       live preview      /source/<id>.jpg   its source frame
    /thumb/<id>/before.jpg  thumbnails        /thumb/<id>/after.jpg
    /file/<id>              the result file (only from the outbox)

With ``daemon.http_token`` every request needs ``Authorization: Bearer <token>``; a browser
may open ``/?token=<token>`` once, which sets an HttpOnly, SameSite=Strict cookie with it.
The bound URL is logged and written to ``<state>/http.json`` (temp + rename) for tests and
tools; removed at close.
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import os
import re
import shutil
import socket
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nstd.config import Config
from nstd.http_address import parse_bind
from nstd.web import metrics, page, thumbs
from nstd.web.address import ADDRESS_FILE
from nstd.web.model import public_job, snapshot

log = logging.getLogger(__name__)

COOKIE = "nstd_token"
ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("index", re.compile(r"/")),
    ("status", re.compile(r"/api/status\.json")),
    ("metrics", re.compile(r"/metrics")),
    ("job", re.compile(r"/job/(\d{1,12})")),
    ("live", re.compile(r"/(preview|source)/(\d{1,12})\.jpg")),
    ("thumb", re.compile(r"/thumb/(\d{1,12})/(before|after)\.jpg")),
    ("file", re.compile(r"/file/(\d{1,12})")),
)


class StatusServer:
    """A ThreadingHTTPServer in a daemon thread, reading ``supervisor`` (see module doc)."""

    def __init__(self, config: Config, supervisor: Any, httpd: ThreadingHTTPServer) -> None:
        self.config = config
        self.supervisor = supervisor
        self.httpd = httpd
        self.thread = threading.Thread(target=httpd.serve_forever, name="nstd-http",
                                       kwargs={"poll_interval": 0.5}, daemon=True)
        host, port = httpd.server_address[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        self.address_file = Path(config.daemon.state) / ADDRESS_FILE

    @classmethod
    def start(cls, config: Config, supervisor: Any) -> StatusServer | None:
        """Listen on ``daemon.http`` (None when it is null). A port that cannot be bound is
        logged, and the daemon runs without its page: the jobs matter more."""
        d = config.daemon
        if d.http is None:
            return None
        host, port = parse_bind(d.http)
        handler = type("Handler", (_Handler,), {})
        try:
            server_class = _V6Server if ":" in host else ThreadingHTTPServer
            httpd = server_class((host, port), handler)
        except OSError as exc:
            log.error("status page off: cannot listen on %s (%s); free the port or change "
                      "daemon.http", d.http, exc.strerror or exc)
            return None
        httpd.daemon_threads = True
        server = cls(config, supervisor, httpd)
        handler.server_ref = server  # type: ignore[attr-defined]
        server.thread.start()
        server._write_address()
        log.info("status page on %s%s", server.url,
                 " (token required)" if d.http_token else "")
        return server

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        try:
            self.address_file.unlink()
        except OSError:
            pass

    def _write_address(self) -> None:
        self.address_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self.address_file.with_name(f".{ADDRESS_FILE}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"url": self.url, "pid": os.getpid()}) + "\n")
        os.replace(temp, self.address_file)

    # ----------------------------------------------------------------- what the routes serve

    def status(self) -> dict[str, Any]:
        data = snapshot(self.supervisor)
        data["html"] = page.sections(data, Path(self.config.daemon.work))
        return data

    def job(self, job_id: int) -> Any:
        return self.supervisor.ledger.get(job_id)


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_ref: StatusServer
    server_version = "nstd"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("http %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the thread
            log.warning("status page: %s: %s", type(exc).__name__, exc)
            try:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain")
            except OSError:
                pass

    def _get(self) -> None:
        url = urlsplit(self.path)
        token = self.server_ref.config.daemon.http_token
        set_cookie = None
        if token is not None:
            given = self._token(url.query)
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                self._send(HTTPStatus.UNAUTHORIZED, b"a token is required: "
                           b"Authorization: Bearer <daemon.http_token>\n", "text/plain",
                           extra={"WWW-Authenticate": 'Bearer realm="nstd"'})
                return
            if "token" in parse_qs(url.query):
                set_cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
        for name, pattern in ROUTES:
            match = pattern.fullmatch(url.path)
            if match:
                getattr(self, f"_route_{name}")(*match.groups(), cookie=set_cookie)
                return
        self._not_found()

    def _token(self, query: str) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):].strip()
        values = parse_qs(query).get("token")
        if values:
            return values[0]
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        return cookie[COOKIE].value if COOKIE in cookie else None

    # ----------------------------------------------------------------- routes

    def _route_index(self, *, cookie: str | None) -> None:
        html = page.page(self.server_ref.status()["html"])
        self._send(HTTPStatus.OK, html.encode(), "text/html; charset=utf-8", cookie=cookie)

    def _route_status(self, *, cookie: str | None) -> None:
        body = json.dumps(self.server_ref.status(), separators=(",", ":")).encode()
        self._send(HTTPStatus.OK, body, "application/json", cookie=cookie)

    def _route_metrics(self, *, cookie: str | None) -> None:
        self._send(HTTPStatus.OK, metrics.render(self.server_ref.supervisor),
                   metrics.CONTENT_TYPE, cookie=cookie)

    def _route_job(self, job_id: str, *, cookie: str | None) -> None:
        job = self.server_ref.job(int(job_id))
        if job is None:
            self._not_found()
            return
        self._send(HTTPStatus.OK, page.job_page(public_job(job)).encode(),
                   "text/html; charset=utf-8", cookie=cookie)

    def _route_live(self, which: str, job_id: str, *, cookie: str | None) -> None:
        path = Path(self.server_ref.config.daemon.work) / str(int(job_id)) / f"{which}.jpg"
        self._file(path, "image/jpeg", cookie=cookie, cache=False)

    def _route_thumb(self, job_id: str, which: str, *, cookie: str | None) -> None:
        job = self.server_ref.job(int(job_id))
        path = thumbs.thumbnail(job, which, self.server_ref.config) if job else None
        self._file(path, "image/jpeg", cookie=cookie, cache=True)

    def _route_file(self, job_id: str, *, cookie: str | None) -> None:
        job = self.server_ref.job(int(job_id))
        path = thumbs.result_file(job, self.server_ref.config) if job else None
        kind = (mimetypes.guess_type(path.name)[0] if path else None) or \
            "application/octet-stream"
        self._file(path, kind, cookie=cookie, cache=True)

    # ----------------------------------------------------------------- replies

    def _file(self, path: Path | None, kind: str, *, cookie: str | None, cache: bool) -> None:
        """Stream a file (a result video may be large); 404 when there is none."""
        try:
            handle = open(path, "rb") if path is not None else None  # noqa: SIM115
        except OSError:
            handle = None
        if handle is None:
            self._not_found()
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self._headers(HTTPStatus.OK, size, kind, cookie=cookie,
                          extra={"Cache-Control": "max-age=3600" if cache else "no-store"})
            shutil.copyfileobj(handle, self.wfile, 1 << 20)

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _send(self, status: HTTPStatus, body: bytes, kind: str, *, cookie: str | None = None,
              extra: dict[str, str] | None = None) -> None:
        self._headers(status, len(body), kind, cookie=cookie, extra=extra)
        self.wfile.write(body)

    def _headers(self, status: HTTPStatus, size: int, kind: str, *, cookie: str | None = None,
                 extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(size))
        self.send_header("X-Content-Type-Options", "nosniff")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

"""The status page (`nstd.web`): what it serves, to whom, and how it looks in a real browser.

The browser test drives headless Chromium from the distribution (/usr/bin/chromium, or
$NSTD_CHROMIUM) through Playwright against `nstd run` with a tiny video job: the progress
moves, the live preview loads, a finished result opens. Under CI=true a missing Chromium or
Playwright fails instead of skipping (.ci/run installs the chromium package).
NSTD_SCREENSHOT=docs/status-page.png also writes the page's screenshot there (the README's).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nstd.config import parse_config
from nstd.daemon.ledger import Ledger
from nstd.daemon.slots import WorkerView
from nstd.errors import ConfigError
from nstd.testing.media import write_test_clip, write_test_image
from nstd.testing.site import Site, kill_all
from nstd.web.metrics import METRIC_NAMES
from nstd.web.server import StatusServer

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NSTD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


# --------------------------------------------------------------------------- in-process server


def serve(tmp_path: Path, **daemon: Any) -> StatusServer:
    """A StatusServer on an ephemeral loopback port over a ledger with one done job (a real
    result in the outbox) and one failed job; no workers."""
    config = parse_config({"daemon": {"http": "127.0.0.1:0", **daemon}}, base_dir=tmp_path)
    d = config.daemon
    for key in ("inbox", "outbox", "work", "failed", "done", "state"):
        Path(getattr(d, key)).mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(Path(d.state) / "jobs.sqlite3")
    now = time.time()
    write_test_image(Path(d.done) / "a.png", size=(40, 30), seed=1)
    write_test_image(Path(d.outbox) / "a.mosaic.png", size=(40, 30), seed=2)
    ledger.enqueue("a.png", "k1", "mosaic", {}, now - 10)
    job = ledger.claim(now - 9, 60.0)
    ledger.progress(job.id, 20, 20, 0.0)
    ledger.complete(job.id, str(Path(d.outbox) / "a.mosaic.png"), now - 1)
    ledger.enqueue("b.png", "k2", "mosaic", {}, now)
    bad = ledger.claim(now, 60.0)
    ledger.fail(bad.id, "b.png: not an image nstd can read", now, permanent=True,
                max_attempts=3, backoff_seconds=1.0)
    ledger.enqueue("c.mp4", "k3", "mosaic", {}, now)
    worker = WorkerView("worker 1", "idle", pid=4242, device=None, since=0.0)
    supervisor = SimpleNamespace(ledger=ledger, workers=lambda: (worker,))
    server = StatusServer.start(config, supervisor)
    assert server is not None
    return server


def get(server: StatusServer, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, bytes, http.client.HTTPResponse]:
    """GET ``path`` exactly as written (http.client does not normalise ``..``)."""
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One server for the read-only tests (closing one waits up to its 0.5 s poll)."""
    server = serve(tmp_path_factory.mktemp("web"))
    yield server
    server.close()


def test_the_bound_address_is_written_to_the_state_folder(tmp_path: Path) -> None:
    server = serve(tmp_path)
    written = json.loads(server.address_file.read_text())
    assert written["url"] == server.url and server.url.startswith("http://127.0.0.1:")
    assert not server.url.endswith(":0/")
    server.close()
    assert not server.address_file.exists()


@pytest.mark.parametrize("path", [
    "/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/etc/passwd",
    "/thumb/../../../etc/passwd", "/thumb/1/../../jobs.sqlite3", "/file/1/../../jobs.sqlite3",
    "/file//etc/passwd", "/preview/%2Fetc%2Fpasswd.jpg", "/source/..%2f..%2fjobs.jpg",
    "/job/1/..", "/file/99", "/thumb/99/after.jpg", "/preview/1.jpg",
])
def test_paths_and_unknown_ids_in_urls_are_404(server: StatusServer, path: str) -> None:
    status, body, _ = get(server, path)
    assert status == 404, (path, body[:80])
    assert b"root:" not in body and b"SQLite" not in body


def test_ids_lead_only_to_the_daemons_own_files(server: StatusServer) -> None:
    status, body, response = get(server, "/file/1")
    assert status == 200 and response.getheader("Content-Type") == "image/png"
    assert body == (Path(server.config.daemon.outbox) / "a.mosaic.png").read_bytes()
    status, body, _ = get(server, "/thumb/1/before.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG, made from done/a.png
    assert list((Path(server.config.daemon.state) / "thumbs").glob("1-*-before.jpg"))  # cached
    status, body, _ = get(server, "/")
    assert status == 200 and b"a.png" in body and b"not an image nstd can read" in body
    assert str(server.config.daemon.outbox).encode() not in body  # ids, never paths


def test_status_json_has_the_queue_and_recent_results(server: StatusServer) -> None:
    status, body, _ = get(server, "/api/status.json")
    data = json.loads(body)
    assert status == 200 and data["queue_length"] == 1 and data["queue"][0]["name"] == "c.mp4"
    assert [j["state"] for j in data["recent"]] == ["failed", "done"]
    assert data["all_done_by"] is None  # no video has finished: no figure to estimate from
    assert set(data["html"]) == {"summary", "running", "queue", "recent", "workers"}


def test_metrics_parse_and_name_every_metric(server: StatusServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    status, body, response = get(server, "/metrics")
    assert status == 200 and response.getheader("Content-Type").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    names = {s.name for f in families.values() for s in f.samples}
    assert set(METRIC_NAMES) <= names, set(METRIC_NAMES) - names
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("nstd_jobs", (("state", "done"),))] == 1
    assert samples[("nstd_queue_length", ())] == 1
    assert samples[("nstd_iterations_done_total", ())] == 20
    assert samples[("nstd_failures_total", (("reason", "input"),))] == 1
    assert samples[("nstd_oldest_queued_age_seconds", ())] >= 0
    assert samples[("nstd_worker_up", (("worker", "worker 1"),))] == 1
    assert samples[("nstd_worker_busy", (("worker", "worker 1"),))] == 0


def test_a_token_is_required_when_set(tmp_path: Path) -> None:
    server = serve(tmp_path, http_token="s3cret")
    try:
        assert get(server, "/api/status.json")[0] == 401
        assert get(server, "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(server, "/file/1")[0] == 401  # files too, not just the page
        assert get(server, "/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
        status, _, response = get(server, "/?token=s3cret")  # a browser's first visit
        assert status == 200
        cookie = response.getheader("Set-Cookie")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get(server, "/api/status.json", {"Cookie": cookie.split(";")[0]})[0] == 200
    finally:
        server.close()


@pytest.mark.parametrize("bind", ["0.0.0.0:8765", "192.168.1.5:8765", ":8765", "[::]:80",
                                  "example.org:8765"])
def test_a_non_loopback_bind_without_a_token_is_refused(bind: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"daemon": {"http": bind}})
    assert "daemon.http_token" in str(caught.value)
    parse_config({"daemon": {"http": bind, "http_token": "t0ken"}})  # with one: fine


@pytest.mark.parametrize("bind", ["127.0.0.1:8765", "localhost:1", "[::1]:8765", None])
def test_loopback_or_off_needs_no_token(bind: str | None) -> None:
    assert parse_config({"daemon": {"http": bind}}).daemon.http == bind


def test_nstd_run_refuses_to_start_on_a_non_loopback_bind(tmp_path: Path,
                                                          vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"http": "0.0.0.0:0"})
    result = site.nstd("run", timeout=30)
    assert result.returncode == 2
    assert "daemon.http_token" in result.stderr and "Traceback" not in result.stderr


def test_the_page_server_imports_no_torch() -> None:
    """It runs inside the supervisor, which must start in a fraction of a second."""
    code = ("import sys, nstd.web.server, nstd.web.metrics, nstd.web.thumbs; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.stdout.strip() == "False", result.stderr


# --------------------------------------------------------------------------- the browser


def _chromium() -> Any:
    """The Playwright module, or a failure (CI) / skip (elsewhere) saying what is missing."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing, sync_api = "the playwright package (pip install -e '.[test]')", None
    if missing is None and not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing = f"Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} is missing: .ci/run installs it")
        pytest.skip(f"{missing} is not installed")
    return sync_api


def _variance(png: Path) -> float:
    from PIL import Image, ImageStat

    with Image.open(png) as image:
        return max(ImageStat.Stat(image.convert("RGB")).var)


def test_the_page_in_a_browser_shows_a_running_job_and_its_result(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    sync_api = _chromium()
    site = Site.create(tmp_path / "site", vgg_weights_path,
                       style={"max_side": 64, "iterations": 4, "coarse_iterations": 2},
                       # frame_target 0: every frame its 15 iterations, so the video runs
                       # long enough for the page to be watched
                       video={"frame_iterations": 15, "frame_target": 0.0},
                       daemon={"http": "127.0.0.1:0"})
    daemon = site.start("page")
    try:
        url = json.loads((site.state / "http.json").read_text())["url"]
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 700})
                page.goto(url)
                status = json.loads(site.nstd("status", "--json").stdout)
                assert status["status_page"] == url  # `nstd status` finds the page
                assert page.locator("#workers .state").first.inner_text() in (
                    "starting", "idle")
                write_test_clip(site.inbox / "clip.mp4", frames=64, size=(64, 48))
                write_test_image(site.inbox / "photo.png", size=(48, 32), seed=3)
                text = page.locator("#running .progress-text")
                text.wait_for(timeout=30_000)
                page.wait_for_function(
                    "() => /frame [1-9]/.test(document.querySelector("
                    "'#running .progress-text')?.textContent || '')", timeout=30_000)
                first = text.inner_text()
                page.wait_for_function(
                    "(first) => { const t = document.querySelector('#running .progress-text');"
                    " return t && t.textContent !== first; }", arg=first, timeout=30_000)
                page.wait_for_function(
                    "() => { const i = document.querySelector('#running img.preview');"
                    " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
                shot = tmp_path / "status-page.png"
                page.screenshot(path=str(shot), full_page=True)
                assert _variance(shot) > 100, "the screenshot is blank"
                if os.environ.get("NSTD_SCREENSHOT"):
                    target = REPO / os.environ["NSTD_SCREENSHOT"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shot, target)
                result = page.locator('#recent a.result[href="job/1"]')  # the video
                result.wait_for(timeout=60_000)
                result.click()
                page.wait_for_url("**/job/*")
                page.wait_for_function(
                    "() => { const i = document.querySelector('img.after');"
                    " return i && i.complete && i.naturalWidth > 0; }", timeout=10_000)
                assert page.locator("#file").inner_text().startswith("clip.mosaic")
                job_shot = tmp_path / "job-page.png"
                page.screenshot(path=str(job_shot))
                assert _variance(job_shot) > 100
            finally:
                browser.close()
    finally:
        kill_all()
        del daemon


def test_per_iteration_heartbeats_do_not_starve_a_videos_frame_progress() -> None:
    """The page's progress bar moves while a video runs: frame events get through even when
    the engine beats a heartbeat every few hundred milliseconds (it used to say "starting"
    until the last frame)."""
    from nstd.daemon.lifecycle import Reporter
    from nstd.progress import JobProgress

    clock = [0.0]
    events: list[dict[str, Any]] = []
    reporter = Reporter(7, events.append, clock=lambda: clock[0])
    for frame in range(1, 9):  # 1.2 s per frame, a heartbeat every 0.3 s
        for _ in range(4):
            clock[0] += 0.3
            reporter.heartbeat()
        reporter.progress(JobProgress(done=frame, total=10, unit="frame", elapsed=clock[0]))
    frames = [e["done"] for e in events if e["event"] == "progress"]
    assert len(frames) >= 6 and frames == sorted(frames), events
    beats = [e for e in events if e["event"] == "heartbeat"]
    assert len(beats) <= len(frames)  # heartbeats only fill silences, at most 1 per second

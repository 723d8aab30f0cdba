"""The status readers on a large ledger: `/metrics`, `/api/status.json` and `nstd status` with
100,000 finished jobs, against a bar of 100 ms each.

    python bench/ledger.py                          # 100,000 finished jobs, 15 timed reads
    python bench/ledger.py --jobs 1000000 --repeat 5 --json bench/out/ledger.json

Builds a ledger the way the daemon would leave it after a long life: `Ledger.open` creates the
real schema (migrations, indexes, the counters' triggers), then one transaction inserts
``--jobs`` finished rows with ``executemany`` (90% done, 10% failed with realistic errors;
30% videos with hundreds of frames, 70% images with hundreds of iterations; a year of
times), and the `Ledger` API adds a few queued jobs and one running. This process then plays
the daemon: it holds the `DaemonLock` and serves the status page with the real
`StatusServer` on a loopback port (one idle worker slot), and times, best and median of
``--repeat`` reads after one warm-up (and the median CPU time of the process):

- ``GET /metrics`` and ``GET /api/status.json`` over HTTP (a new connection each, as a
  scraper or the page's poll would);
- ``nstd status``: the CLI's own entry point in-process (config file, read-only ledger open,
  the text), stdout captured;
- for scale, `Ledger.recount` (3 reads): the same totals summed from every row, the
  whole-ledger scan the readers no longer do.

Exit status 1 when a reader's median is over the bar, or the counters differ from a recount.
To see the figures of an older nstd, run a copy of this file from an export of that commit
(it only uses what existed then).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.cli.main import main as nstd_main  # noqa: E402
from nstd.config import parse_config  # noqa: E402
from nstd.daemon.ledger import DaemonLock, Ledger, ledger_path  # noqa: E402
from nstd.daemon.slots import WorkerView  # noqa: E402
from nstd.web.server import StatusServer  # noqa: E402

BAR_MS = 100.0
FOLDERS = ("", "2025/holiday", "2025/garden", "phone/DCIM", "clips", "scans/family")
IMAGES = (".jpg", ".JPG", ".jpeg", ".png", ".webp", ".tif")
VIDEOS = (".mp4", ".MOV", ".mkv", ".webm")
STYLES = ("mosaic", "candy", "udnie", "starry-night")
ERRORS = (
    "CUDA out of memory at 2048 px (tried 3 times with smaller tiles)",
    "{name} is truncated or corrupt: cannot decode frame 1812",
    "{name}: not an image nstd can read",
    "{name} is longer than limits.max_video_seconds (600 s)",
    "the sidecar {name}.yaml: style.iterations: must be at most 5000",
    "the worker process died (signal 9) while stylizing {name}",
    "no report from the worker for 300 s: stalled, killed",
    "no space left on device while writing the output",
    "something unexpected happened",
)
COLUMNS = ("source, content_key, style, settings, state, attempts, lease_until, not_before, "
           "progress_done, progress_total, eta_seconds, created, started, finished, output, "
           "error, masks")


def finished_row(i: int, rng: random.Random, now: float) -> tuple[Any, ...]:
    """One done (90%) or failed (10%) job, as the daemon would have left it."""
    video = rng.random() < 0.3
    ext = rng.choice(VIDEOS if video else IMAGES)
    folder = rng.choice(FOLDERS)
    name = f"{'clip' if video else 'IMG'}_{i:06d}{ext}"
    source = f"{folder}/{name}" if folder else name
    style = rng.choice(STYLES)
    total = rng.randint(120, 3600) if video else rng.randint(300, 1000)
    created = now - rng.uniform(3600.0, 365 * 86400.0)
    started = created + rng.uniform(1.0, 600.0)
    took = total * (rng.uniform(0.8, 3.0) if video else rng.uniform(0.02, 0.1))
    failed = rng.random() < 0.1
    done = rng.randint(0, total) if failed else total
    settings = '{"style": {"max_side": 768}}' if rng.random() < 0.1 else "{}"
    key = f"{rng.randint(10**4, 10**10)}:{int(created * 1e9)}:{rng.getrandbits(256):064x}"
    output = None if failed else f"/srv/nstd/outbox/{source[:-len(ext)]}.{style}{ext}"
    error = rng.choice(ERRORS).format(name=name) if failed else None
    return (source, key, style, settings, "failed" if failed else "done",
            rng.randint(1, 3) if failed else 1, None, created, done, total,
            None if failed else 0.0, created, started, started + took, output, error, "[]")


def build(path: Path, jobs: int, now: float, seed: int = 1) -> tuple[float, float]:
    """The ledger at ``path`` with ``jobs`` finished rows, 5 queued and 1 running job.
    Returns the wall and CPU seconds of the bulk insert (the triggers count every row)."""
    with Ledger.open(path):
        pass  # the real schema, migrations and triggers
    rng = random.Random(seed)
    rows = [finished_row(i, rng, now) for i in range(jobs)]
    begin, begin_cpu = time.perf_counter(), time.process_time()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # A cache for the whole build: the transaction's pages stay in memory until COMMIT
        # instead of spilling to the WAL (the schema, triggers included, is the ledger's).
        db.execute("PRAGMA cache_size = -262144")
        db.execute("PRAGMA synchronous = OFF")  # a throw-away file: no fsync of 45 MB
        db.execute("BEGIN IMMEDIATE")
        db.executemany(f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * 17)})", rows)
        db.execute("COMMIT")
    finally:
        db.close()
    took = (time.perf_counter() - begin, time.process_time() - begin_cpu)
    with Ledger.open(path) as ledger:
        for i in range(6):
            ledger.enqueue(f"inbox-{i}.{'mp4' if i % 2 else 'png'}", f"new{i}", "mosaic", {},
                           now - 60 + i)
        job = ledger.claim(now - 30, 3600.0)
        assert job is not None
        ledger.progress(job.id, 40, 100, 75.0)
    return took


def timed(read: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Best and median wall milliseconds of ``repeat`` calls of ``read``, after one warm-up,
    and the median CPU milliseconds of this process (every thread: the HTTP server's too),
    which a busy machine inflates less than the wall time."""
    read()
    wall, cpu = [], []
    for _ in range(repeat):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        read()
        wall.append((time.perf_counter() - begin) * 1000.0)
        cpu.append((time.process_time() - begin_cpu) * 1000.0)
    return {"best_ms": min(wall), "median_ms": statistics.median(wall),
            "cpu_median_ms": statistics.median(cpu)}


def http_get(server: StatusServer, path: str) -> bytes:
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return body
    finally:
        conn.close()


def nstd_status(config_file: Path) -> str:
    """``nstd status --config FILE`` in-process; its printed text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = nstd_main(["status", "--config", str(config_file)])
    if code != 0:
        raise RuntimeError(f"nstd status exited {code}")
    return out.getvalue()


def measure(root: Path, jobs: int, repeat: int) -> dict[str, Any]:
    """Build the ledger under ``root``, serve it, time each reader."""
    folders = {key: str(root / key) for key in ("inbox", "outbox", "work", "failed", "done",
                                                "state")}
    for folder in folders.values():
        Path(folder).mkdir(parents=True)
    config_file = root / "config.yaml"
    config_file.write_text(json.dumps({"daemon": {**folders, "http": "127.0.0.1:0"}}))
    config = parse_config({"daemon": {**folders, "http": "127.0.0.1:0"}}, base_dir=root)
    path = ledger_path(folders["state"])
    now = time.time()
    insert_seconds, insert_cpu = build(path, jobs, now)
    results: dict[str, Any] = {"jobs": jobs, "repeat": repeat,
                               "insert_seconds": round(insert_seconds, 1),
                               "insert_cpu_seconds": round(insert_cpu, 1),
                               "ledger_mib": round(path.stat().st_size / 2**20, 1)}
    worker = WorkerView("worker 1", "idle", pid=os.getpid(), device=None, since=0.0)
    with DaemonLock(path), Ledger.open(path) as ledger:
        supervisor = SimpleNamespace(ledger=ledger, workers=lambda: (worker,))
        server = StatusServer.start(config, supervisor)
        assert server is not None
        try:
            readers: dict[str, Callable[[], Any]] = {
                "GET /metrics": lambda: http_get(server, "/metrics"),
                "GET /api/status.json": lambda: http_get(server, "/api/status.json"),
                "nstd status": lambda: nstd_status(config_file),
            }
            if hasattr(ledger, "recount"):  # scale: one whole-ledger scan
                readers["(Ledger.recount: a full scan)"] = ledger.recount
            results["readers"] = {name: timed(read, repeat if name[0] != "(" else 3)
                                  for name, read in readers.items()}
            if hasattr(ledger, "recount"):
                results["counters_equal_recount"] = ledger.tally() == ledger.recount()
            results["bytes"] = {"metrics": len(http_get(server, "/metrics")),
                                "status_json": len(http_get(server, "/api/status.json"))}
        finally:
            server.close()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{results['jobs']:,} finished jobs + 6 live ({results['ledger_mib']} MiB; bulk "
             f"insert {results['insert_seconds']} s, CPU {results['insert_cpu_seconds']} s), "
             f"best and median of {results['repeat']} reads, bar {BAR_MS:.0f} ms",
             f"{'reader':<32} {'best ms':>9} {'median ms':>10} {'cpu ms':>8}  under the bar",
             "-" * 75]
    for name, figures in results["readers"].items():
        verdict = "" if name.startswith("(") else (
            "yes" if figures["median_ms"] < BAR_MS else "NO")
        lines.append(f"{name:<32} {figures['best_ms']:>9.1f} {figures['median_ms']:>10.1f} "
                     f"{figures['cpu_median_ms']:>8.1f}  {verdict}")
    if "counters_equal_recount" in results:
        lines.append(f"counters equal a recount: {results['counters_equal_recount']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="finished jobs (100000)")
    parser.add_argument("--repeat", type=int, default=15, help="timed reads per reader (15)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nstd-ledger-bench-") as tmp:
        results = measure(Path(tmp), args.jobs, args.repeat)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, " \
                         f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}"
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    over = [name for name, f in results["readers"].items()
            if not name.startswith("(") and f["median_ms"] >= BAR_MS]
    return 1 if over or results.get("counters_equal_recount") is False else 0


if __name__ == "__main__":
    sys.exit(main())

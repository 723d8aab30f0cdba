"""Idle cost of `nstd run` and the time from a file settling to its job starting.

    python bench/daemon_idle.py                     # 30 s idle, 5 drops, shipped settle (5 s)
    python bench/daemon_idle.py --idle 60 --drops 10 --json bench/out/idle.json

Starts the daemon (full-width random VGG-19 on the CPU: the real network's memory; --slim for
the 1/8-width test network) and waits for READY ("ready: watching"), then:
- idle: CPU time (user + system, all threads, from /proc/<pid>/stat) over --idle seconds with
  nothing to do, RSS (VmRSS) and the thread count;
- --http: with the status page on (daemon.http 127.0.0.1:0, as shipped but an ephemeral
  port; the idle figure then includes its server thread) and, after the drops, the bytes of
  the page (HTML + inline JS), of /api/status.json and of /metrics;
- drops: writes a 64x48 PNG into the inbox --drops times, one after the other, and measures
  from the moment it settled (its mtime + daemon.settle_seconds) to the daemon's "started"
  log line; then RSS again.
The subprocess runs with OMP_NUM_THREADS=1 (see nstd/testing/site.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.testing.media import write_test_image  # noqa: E402
from nstd.testing.site import Site, kill_all, log_time  # noqa: E402
from nstd.testing.weights import write_random_vgg19  # noqa: E402


def measure(root: Path, idle: float, drops: int, settle: float, slim: bool,
            http: bool = False) -> dict[str, Any]:
    weights = write_random_vgg19(root / "vgg19.pth", seed=0, width_divisor=8 if slim else 1)
    site = Site.create(root / "site", weights, model={"device": "cpu"},
                       style={"max_side": 64, "iterations": 10, "coarse_iterations": 5,
                              "min_scale_side": 32},
                       daemon={"settle_seconds": settle, "rescan_seconds": 60.0,
                               "http": "127.0.0.1:0" if http else None})
    started = time.monotonic()
    daemon = site.start("idle")
    ready_seconds = time.monotonic() - started
    time.sleep(5.0)  # let start-up settle (imports, first allocations)
    cpu0, wall0 = daemon.cpu_seconds(), time.monotonic()
    time.sleep(idle)
    cpu1, wall1 = daemon.cpu_seconds(), time.monotonic()
    idle_rss = daemon.rss_kb() or 0
    threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
    latencies = []
    for i in range(drops):
        name = f"img{i}.png"
        path = write_test_image(site.inbox / name, size=(64, 48), seed=i)
        settled = os.stat(path).st_mtime + settle
        daemon.wait_log(f"started {name} ", 120)
        line = next(ln for ln in daemon.log().splitlines() if f"started {name} " in ln)
        latencies.append(log_time(line) - settled)
        daemon.wait_log(f"done {name} ", 300)
        time.sleep(1.0)
    after_rss = daemon.rss_kb() or 0
    sizes = page_sizes(site) if http else None
    exit_code = daemon.stop()
    return {
        "weights": "1/8-width random VGG-19" if slim else "full-width random VGG-19",
        "start_to_ready_seconds": round(ready_seconds, 2),
        "idle_seconds": round(wall1 - wall0, 1),
        "idle_cpu_seconds": round(cpu1 - cpu0, 3),
        "idle_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 3),
        "idle_rss_mib": round(idle_rss / 1024, 1),
        "threads": threads,
        "settle_seconds": settle,
        "settle_to_start_ms": [round(1000 * x) for x in latencies],
        "settle_to_start_median_ms": round(1000 * statistics.median(latencies)) if latencies
        else None,
        "rss_after_drops_mib": round(after_rss / 1024, 1),
        "exit_code_after_sigterm": exit_code,
        "http": http,
        "bytes": sizes,
    }


def page_sizes(site: Site) -> dict[str, int]:
    """Bytes of the status page's responses (with ``drops`` results in its lists)."""
    import urllib.request

    url = json.loads((site.state / "http.json").read_text())["url"]
    return {name: len(urllib.request.urlopen(url + path, timeout=10).read())
            for name, path in (("page_html_js", ""), ("status_json", "api/status.json"),
                               ("metrics", "metrics"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=30.0, help="idle seconds measured")
    parser.add_argument("--drops", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="daemon.settle_seconds (the shipped default is 5)")
    parser.add_argument("--slim", action="store_true", help="1/8-width network")
    parser.add_argument("--http", action="store_true", help="status page on (daemon.http)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nstd-idle-"))
    try:
        result = measure(root, args.idle, args.drops, args.settle, args.slim, args.http)
    finally:
        kill_all()
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = platform.platform()
    print(f"start to READY: {result['start_to_ready_seconds']} s ({result['weights']})")
    print(f"idle {result['idle_seconds']} s: CPU {result['idle_cpu_percent']} % "
          f"({result['idle_cpu_seconds']} s CPU), RSS {result['idle_rss_mib']} MiB, "
          f"{result['threads']} threads")
    print(f"settle-to-start latency (ms): {', '.join(map(str, result['settle_to_start_ms']))}"
          f" (median {result['settle_to_start_median_ms']})")
    print(f"RSS after {args.drops} images: {result['rss_after_drops_mib']} MiB; exit code "
          f"after SIGTERM: {result['exit_code_after_sigterm']}")
    if result["bytes"]:
        print("status page bytes: " + ", ".join(f"{k} {v}" for k, v in result["bytes"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

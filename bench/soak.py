"""Soak benchmark of `nstd run`: load, a long video, and kill -9 at every failpoint.

    python bench/soak.py                          # all three phases, prints the figures
    python bench/soak.py --phases load --images 300 --videos 3 --json bench/out/soak.json
    python bench/soak.py --phases long --long-frames 3000
    python bench/soak.py --phases kill --kill-runs 3

load: IMAGES tiny images (16-32 px) and VIDEOS short clips dropped at once (renamed in from a
      staging folder) into an idle daemon. Checks every file is processed exactly once (one
      ledger row, done, attempt 1; one output, no -1 duplicates; source byte-identical in
      done/). Reports wall time, peak RSS (VmHWM), notice latency (drop -> "noticed" log line).
long: one video of LONG_FRAMES frames at 32x24. Samples RSS every 0.25 s with the ledger's
      frame progress and reports RSS at the start, middle and end; while it runs, BUSY_DROPS
      images are dropped one every 0.5 s and their notice latency is reported (intake while
      a job runs happens on the engine's heartbeat).
kill: for each failpoint (nstd/faults.py), KILL_RUNS runs on fresh folders: the daemon is
      started with NSTD_FAILPOINTS=<point>=kill (a random @N for per-frame points), must die
      there (exit -9; a point inside a worker also arms daemon.worker_died, so that the
      supervisor dies with it and the whole service is killed there), is restarted without
      failpoints, and must finish every job exactly once: expected outputs only, no temp
      files, sources byte-identical in done/ or failed/.

Subprocesses run with OMP_NUM_THREADS=1 and a width-reduced random VGG-19 (--full for the real
width: the same code path, more memory); tiny sizes, few iterations: this measures the
daemon, not the engine.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nstd.testing.media import write_test_clip, write_test_image  # noqa: E402
from nstd.testing.site import (  # noqa: E402
    Site,
    checksums,
    kill_all,
    listing,
    log_time,
    temp_files,
)
from nstd.testing.weights import write_random_vgg19  # noqa: E402

KILL_VIDEO_FRAMES = 12


def noticed_times(log: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in log.splitlines():
        match = re.search(r" nstd.daemon.supervisor: noticed (.+?)( \(scan\))?$", line)
        if match:
            found.setdefault(match.group(1), log_time(line))
    return found


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {"median": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))],
            "max": values[-1], "n": len(values)}


def fmt_ms(stats: dict[str, float]) -> str:
    return (f"median {1000 * stats['median']:.0f} ms, p95 {1000 * stats['p95']:.0f} ms, "
            f"max {1000 * stats['max']:.0f} ms (n={stats['n']:.0f})")


# --------------------------------------------------------------------------- load


def phase_load(root: Path, weights: Path, images: int, videos: int) -> dict[str, Any]:
    site = Site.create(root / "load", weights, style={"iterations": 1})
    stage = root / "load-stage"
    (stage / "other").mkdir(parents=True)
    rng = random.Random(0)
    for i in range(images):
        write_test_image(stage / f"img{i:04d}.png", size=(rng.randint(16, 32),
                                                          rng.randint(16, 32)), seed=i)
    for i in range(videos):
        write_test_clip(stage / "other" / f"clip{i}.mp4", frames=24, size=(32, 24),
                        rate=Fraction(24), seed=i)
    sources = checksums(stage)
    daemon = site.start("load")
    ready_rss = daemon.rss_kb()
    (site.inbox / "other").mkdir()
    dropped: dict[str, float] = {}
    started = time.monotonic()
    for rel in sorted(sources):
        (stage / rel).rename(site.inbox / rel)
        dropped[rel] = time.time()
    daemon.wait_for(lambda: len(listing(site.done)) + len(listing(site.failed)) // 2
                    >= len(sources), 3600, "every file handled", interval=0.2)
    wall = time.monotonic() - started
    peak = daemon.peak_rss_kb()
    log = daemon.log()
    exit_code = daemon.stop()
    jobs = site.jobs()
    outputs = listing(site.outbox)
    noticed = noticed_times(log)
    exactly_once = (sorted(j["source"] for j in jobs) == sorted(sources)
                    and all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)
                    and len(outputs) == len(sources)
                    and not any(re.search(r"-\d+\.\w+$", o) for o in outputs)
                    and checksums(site.done) == sources
                    and all(log.count(f"started {rel} ") == 1 for rel in sources)
                    and temp_files(site.root / "data") == [])
    return {
        "files": len(sources), "images": images, "videos": videos,
        "processed_exactly_once": exactly_once, "lost": len(set(sources) - set(
            j["source"] for j in jobs if j["state"] == "done")),
        "wall_seconds": round(wall, 2), "files_per_second": round(len(sources) / wall, 2),
        "rss_ready_mib": round(ready_rss / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
        "notice_latency_s": summary([noticed[r] - dropped[r] for r in sources if r in noticed]),
        "exit_code": exit_code,
    }


# --------------------------------------------------------------------------- long video


def phase_long(root: Path, weights: Path, frames: int, busy_drops: int) -> dict[str, Any]:
    site = Site.create(root / "long", weights, style={"iterations": 1})
    clip = write_test_clip(root / "long.mp4", frames=frames, size=(32, 24), rate=Fraction(25))
    daemon = site.start("long")
    ready_rss = daemon.rss_kb()
    started = time.monotonic()
    shutil.move(clip, site.inbox / "long.mp4")
    samples: list[tuple[float, int, int]] = []  # (seconds, frames done, RSS KiB)
    dropped: dict[str, float] = {}
    next_drop = None
    while not (site.done / "long.mp4").exists():
        if not daemon.alive():
            raise SystemExit(f"the daemon died:\n{daemon.tail()}")
        rows = site.jobs()
        done = next((r["progress_done"] or 0 for r in rows if r["source"] == "long.mp4"), 0)
        rss = daemon.rss_kb() or 0
        samples.append((time.monotonic() - started, done, rss))
        now = time.monotonic()
        if done >= 1 and next_drop is None:
            next_drop = now
        if next_drop is not None and now >= next_drop and len(dropped) < busy_drops:
            name = f"busy{len(dropped):03d}.png"
            write_test_image(root / name, size=(24, 16), seed=len(dropped))
            (root / name).rename(site.inbox / name)
            dropped[name] = time.time()
            next_drop = now + 0.5
        time.sleep(0.25)
    wall = time.monotonic() - started
    daemon.wait_for(lambda: all((site.done / n).exists() for n in dropped), 600,
                    "the images dropped meanwhile")
    peak = daemon.peak_rss_kb()
    log = daemon.log()
    daemon.stop()
    running = [(t, d, r) for t, d, r in samples if d >= 1]

    def at(fraction: float) -> dict[str, float]:
        goal = max(1, int(frames * fraction))
        t, d, r = next(((t, d, r) for t, d, r in running if d >= goal), running[-1])
        return {"frame": d, "seconds": round(t, 1), "rss_mib": round(r / 1024, 1)}

    noticed = noticed_times(log)
    from nstd.media.container import count_frames

    return {
        "frames": frames, "wall_seconds": round(wall, 1),
        "output_frames": count_frames(site.outbox / "long.mosaic.mp4"),
        "rss_ready_mib": round(ready_rss / 1024, 1),
        "rss_start": at(0.0), "rss_middle": at(0.5), "rss_end": at(0.98),
        "rss_max_while_running_mib": round(max(r for _, _, r in running) / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "busy_notice_latency_s": summary([noticed[n] - dropped[n] for n in dropped
                                          if n in noticed]),
    }


# --------------------------------------------------------------------------- kill -9


def _workload(site: Site, kind: str) -> dict[str, str]:
    """Drop a workload; returns {source: expected end} ('done' or 'failed')."""
    inbox = site.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    if kind == "image":
        (inbox / "a.png.yaml").write_text("style:\n  iterations: 3\n")
        write_test_image(inbox / "a.png", size=(24, 16), seed=1)
        write_test_image(inbox / "b.png", size=(20, 20), seed=2)
        return {"a.png": "done", "b.png": "done"}
    if kind == "bad":
        (inbox / "bad.png.yaml").write_text("style:\n  iterations: 3\n")
        (inbox / "bad.png").write_text("not an image\n")
        write_test_image(inbox / "b.png", size=(20, 20), seed=2)
        return {"bad.png": "failed", "b.png": "done"}
    (inbox / "mosaic").mkdir(exist_ok=True)
    (inbox / "mosaic" / "v.mp4.yaml").write_text("video:\n  frame_iterations: 2\n")
    clip = write_test_clip(site.root / "v.mp4", frames=KILL_VIDEO_FRAMES, size=(32, 24),
                           rate=Fraction(12))
    shutil.move(clip, inbox / "mosaic" / "v.mp4")
    return {"mosaic/v.mp4": "done"}


# Every failpoint of nstd/faults.py that a job passes. A kill inside a worker (worker.*,
# plan.frame, job.*, video.frame, publish.*) kills only that worker: the supervisor would
# restart it and retry the job. Adding daemon.worker_died=kill makes the supervisor die as
# soon as it finds the worker dead, before it records anything about the death: the whole
# service is killed there, as on a power cut or a kill -9 of its cgroup (daemon.worker_died
# itself is reached in every such run).
W = ";daemon.worker_died=kill"
KILL_POINTS: list[tuple[str, str]] = [  # (failpoint spec; {n} = random frame), workload
    ("intake.settled=kill", "image"),
    ("ledger.claim=kill", "image"),
    ("daemon.claimed=kill", "image"),
    ("daemon.link=kill", "image"),  # claimed, source not yet linked into work/
    ("worker.job=kill" + W, "image"),  # linked and handed over, not yet opened
    ("job.heartbeat=kill" + W, "image"),  # inside the engine
    ("job.progress=kill" + W, "image"),
    ("publish.before_rename=kill" + W, "image"),
    ("publish.after_link=kill" + W, "image"),
    ("daemon.completed=kill", "image"),
    ("outcome.sidecar_moved=kill", "image"),
    ("daemon.failed_marked=kill", "bad"),
    ("outcome.sidecar_moved=kill", "bad"),
    ("daemon.claimed=kill", "video"),
    ("worker.decode=kill" + W, "video"),  # the probe or plan pass started
    ("plan.frame=kill@{n}" + W, "video"),  # during the plan pass
    ("video.frame=kill@{n}" + W, "video"),
    ("publish.before_rename=kill" + W, "video"),  # the encoder's file complete, not renamed
    ("publish.before_rename=kill@2" + W, "video"),  # the final rename
    ("publish.after_link=kill@2" + W, "video"),
    ("daemon.completed=kill", "video"),
]


def kill_run(root: Path, weights: Path, spec: str, kind: str) -> dict[str, Any]:
    site = Site.create(root, weights, daemon={"max_attempts": 10})
    expected = _workload(site, kind)
    sources = checksums(site.inbox)
    first = site.start("killed", failpoints=spec, wait_ready=False)
    rc = first.wait_exit(120)
    points = [entry.split("=")[0] for entry in spec.split(";")]  # the worker's, then ours
    killed = rc == -9 and all(f"failpoint {point}: kill" in first.log() for point in points)
    second = site.start("restart")
    ok = True
    try:
        second.wait_for(lambda: not listing(site.inbox) and not listing(site.work), 120,
                        "every job finished")
        time.sleep(0.3)
    except AssertionError:
        ok = False
    second.stop()
    jobs = site.jobs()
    outputs = listing(site.outbox)
    want_outputs = sorted(
        ("mosaic/v.mosaic.mp4" if s.endswith(".mp4") else s.replace(".png", ".mosaic.png"))
        for s, end in expected.items() if end == "done")
    found = {**checksums(site.done), **checksums(site.failed)}
    problems = []
    if not killed:
        problems.append(f"not killed at {spec} (exit {rc})")
    if not ok:
        problems.append("did not finish after the restart")
    if sorted(outputs) != want_outputs:
        problems.append(f"outbox {outputs} != {want_outputs}")
    if sorted((j["source"], j["state"]) for j in jobs) != sorted(expected.items()):
        problems.append(f"ledger {[(j['source'], j['state']) for j in jobs]}")
    if any(found.get(rel) != digest for rel, digest in sources.items()):
        problems.append("a source was lost or altered")
    if temp_files(site.root / "data"):
        problems.append(f"temp files left: {temp_files(site.root / 'data')}")
    if listing(site.inbox):
        problems.append(f"left in the inbox: {listing(site.inbox)}")
    if kind == "bad" and not (site.failed / "bad.png.error.txt").is_file():
        problems.append("no error.txt")
    return {"spec": spec, "workload": kind, "survived": not problems, "problems": problems}


def phase_kill(root: Path, weights: Path, runs: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    results = []
    for i, (template, kind) in enumerate(KILL_POINTS):
        for r in range(runs):
            spec = template.format(n=rng.randint(1, KILL_VIDEO_FRAMES))
            result = kill_run(root / f"kill{i:02d}-{r}", weights, spec, kind)
            print(f"  {'ok  ' if result['survived'] else 'FAIL'} {spec:34s} ({kind})"
                  + ("" if result["survived"] else f": {'; '.join(result['problems'])}"),
                  flush=True)
            results.append(result)
    points = sorted({e.split("=")[0] for t, _ in KILL_POINTS for e in t.split(";")})
    return {"kill_points": len(points), "specs": len(KILL_POINTS), "runs_per_spec": runs,
            "runs": len(results), "survived": sum(r["survived"] for r in results),
            "results": results}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="load,long,kill")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--long-frames", type=int, default=3000)
    parser.add_argument("--busy-drops", type=int, default=20)
    parser.add_argument("--kill-runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true",
                        help="full-width random VGG-19 (real memory) instead of 1/8 width")
    parser.add_argument("--workdir", type=Path, help="keep the folders here (default: temp)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="nstd-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    weights = write_random_vgg19(root / "vgg19.pth", seed=0,
                                 width_divisor=1 if args.full else 8)
    report: dict[str, Any] = {"machine": platform.platform(), "python": sys.version.split()[0],
                              "weights": "full-width random" if args.full else "1/8-width random"}
    try:
        if "load" in phases:
            print(f"load: {args.images} images + {args.videos} videos at once ...", flush=True)
            load = report["load"] = phase_load(root, weights, args.images, args.videos)
            print(f"  {load['files']} files in {load['wall_seconds']} s "
                  f"({load['files_per_second']}/s); exactly once: "
                  f"{load['processed_exactly_once']}, lost: {load['lost']}; RSS ready "
                  f"{load['rss_ready_mib']} MiB, peak {load['peak_rss_mib']} MiB; notice "
                  f"latency {fmt_ms(load['notice_latency_s'])}")
        if "long" in phases:
            print(f"long: one video of {args.long_frames} frames ...", flush=True)
            long = report["long"] = phase_long(root, weights, args.long_frames,
                                               args.busy_drops)
            print(f"  {long['output_frames']}/{long['frames']} frames in "
                  f"{long['wall_seconds']} s; RSS start {long['rss_start']['rss_mib']} MiB "
                  f"(frame {long['rss_start']['frame']}), middle "
                  f"{long['rss_middle']['rss_mib']} MiB (frame {long['rss_middle']['frame']}),"
                  f" end {long['rss_end']['rss_mib']} MiB (frame {long['rss_end']['frame']}); "
                  f"max while running {long['rss_max_while_running_mib']} MiB; notice latency "
                  f"of drops while busy {fmt_ms(long['busy_notice_latency_s'])}")
        if "kill" in phases:
            print(f"kill: {len(KILL_POINTS)} failpoint specs x {args.kill_runs} runs ...",
                  flush=True)
            kill = report["kill"] = phase_kill(root, weights, args.kill_runs, args.seed)
            print(f"  kill -9 at {kill['kill_points']} failpoints ({kill['specs']} positions) x "
                  f"{kill['runs_per_spec']} runs: {kill['survived']}/{kill['runs']} "
                  "restarts finished every job exactly once")
    finally:
        kill_all()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = (not report.get("load", {}).get("processed_exactly_once", True)
              or report.get("kill", {}).get("survived") != report.get("kill", {}).get("runs"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale-out on Ray, on paper: frames/s with 1, 2, 4 and 8 actors on a many-shot clip.

    python bench/scaling.py                       # 20 shots, simulated 200 ms frames, ~2.5 min
    python bench/scaling.py --actors 1 2 4 8 --frame-seconds 0.2 --shots 20 --json out.json

There are no GPUs here, so each actor is a "simulated GPU" (`nstd.cluster.backend.SIMULATE_ENV`):
no network is loaded and every computed frame costs a fixed sleep. Everything else is the
product path: a local Ray (`ray.init(num_cpus=2)`), one `ActorPool` of N actors, the driver
(`nstd.cluster.driver.run_job`) planning the clip, cutting it into units (shots; shots longer
than --max-segment-frames split with --overlap frames of warm-up), queueing them in the order
`nstd.cluster.schedule` plans for N actors, shipping the source through the object store,
each actor seeking to and decoding its own unit, and every frame coming back as a 16-bit PNG
that the supervisor side stores and encodes in order as soon as it can; then the rest of the
encode, the verify and the rename.

Figures per actor count: wall seconds for the job (plan to published), frames/s, speed-up
against 1 actor and efficiency = speed-up / actors; plus the same for the stylizing phase
alone (first unit queued to last frame stored), which is what more GPUs buy; "plan+encode"
is the plan pass before it plus the encoding left after it. "LPT bound" and "planned" are the
efficiencies the old longest-first order and the planned order allow these whole shots.

Shots are of seeded random lengths (--min-shot .. --max-shot frames), as in a real edit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_clip(folder: Path, shots: int, lengths: list[int], size: tuple[int, int]) -> Path:
    """Shots of the given lengths, concatenated (each its own texture; hard cuts)."""
    from fractions import Fraction

    import av
    import numpy as np

    from nstd.testing.shots import shot_frames

    frames: list[Any] = []
    for shot, length in enumerate(lengths):
        frames.extend(shot_frames(1, length, size, seed=31 * shot + (shot % 2)))
        if shot % 2:
            frames[-length:] = [255 - f for f in frames[-length:]]
    path = folder / "shots.mp4"
    rate = Fraction(25)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast", "g": "12", "sc_threshold": "0"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def lpt_efficiency(lengths: list[int], actors: int) -> float:
    """What whole units allow, longest first onto the least loaded actor (the old order)."""
    import heapq

    loads = [0] * actors
    for length in sorted(lengths, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + length)
    return sum(lengths) / actors / max(loads)


def planned_efficiency(lengths: list[int], actors: int) -> float:
    """The same for the queue order the driver uses (`nstd.cluster.schedule`)."""
    from nstd.cluster.schedule import dispatch_order, makespan

    order = dispatch_order(lengths, actors, unit_cost=0.0)
    return sum(lengths) / actors / makespan(order, [float(n) for n in lengths], actors)


def run_once(actors: int, clip: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from nstd.cluster.backend import RayBackend
    from nstd.cluster.driver import run_job
    from nstd.config import parse_config, to_mapping
    from nstd.daemon.jobspec import JobSpec
    from nstd.testing.media import write_test_image

    style = folder / "style.png"
    if not style.exists():
        write_test_image(style, size=(32, 32), seed=3)
    config = parse_config({"daemon": {"workers": actors},
                           "model": {"device": "cpu"},
                           "style": {"max_side": max(args.size)},
                           "cluster": {"backend": "ray",
                                       "max_unit_frames": args.max_segment_frames,
                                       "unit_overlap": args.overlap}})
    backend = RayBackend(config)
    pool = backend._pool()
    pool.ready.wait(120)
    while any(p.actor is None for p in pool.places):  # every actor up before the clock starts
        time.sleep(0.05)
    out = folder / f"out-{actors}.mp4"
    work = folder / f"work-{actors}"
    spec = JobSpec(job_id=actors, name=clip.name, source=str(clip), kind="video",
                   styles=(str(style),), config=to_mapping(config), work_dir=str(work),
                   output=str(out))
    events: list[dict[str, Any]] = []
    marks: dict[str, float] = {}

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        stage = event.get("stage")
        if event.get("event") == "progress" and stage in ("frame", "encode"):
            marks.setdefault(stage, time.monotonic())

    started = time.monotonic()
    run_job(spec, pool, emit, lambda: False, order=1, key=f"bench{actors}")
    seconds = time.monotonic() - started
    end = events[-1]
    backend.close()
    if end.get("event") != "published":
        raise SystemExit(f"{actors} actor(s): the job failed: {end}")
    return {"actors": actors, "seconds": seconds,
            "stylize_seconds": marks["encode"] - marks["frame"],
            "plan_seconds": marks["frame"] - started,
            "encode_seconds": started + seconds - marks["encode"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--frame-seconds", type=float, default=0.2)
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--min-shot", type=int, default=8)
    parser.add_argument("--max-shot", type=int, default=24)
    parser.add_argument("--max-segment-frames", type=int, default=300)
    parser.add_argument("--overlap", type=int, default=12)  # the shipped default
    parser.add_argument("--size", type=int, nargs=2, default=[64, 48])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import ray

    os.environ["NSTD_SIMULATE_FRAME_SECONDS"] = str(args.frame_seconds)
    rng = np.random.default_rng(args.seed)
    lengths = [int(n) for n in rng.integers(args.min_shot, args.max_shot + 1, args.shots)]
    frames = sum(lengths)
    folder = Path(tempfile.mkdtemp(prefix="nstd-scaling-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        clip = make_clip(folder, args.shots, lengths, tuple(args.size))
        rows = [run_once(n, clip, folder, args) for n in args.actors]
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    base = next((r for r in rows if r["actors"] == 1), rows[0])
    for row in rows:
        row["frames_per_second"] = frames / row["seconds"]
        row["speedup"] = base["seconds"] / row["seconds"] * base["actors"]
        row["efficiency"] = row["speedup"] / row["actors"]
        row["stylize_speedup"] = base["stylize_seconds"] / row["stylize_seconds"] * \
            base["actors"]
        row["stylize_efficiency"] = row["stylize_speedup"] / row["actors"]
        row["lpt_bound"] = lpt_efficiency(lengths, row["actors"])
        row["planned_bound"] = planned_efficiency(lengths, row["actors"])
    ideal = frames * args.frame_seconds
    print(f"{args.shots} shots ({min(lengths)}-{max(lengths)} frames, {frames} in all), "
          f"simulated {args.frame_seconds * 1000:.0f} ms frames, {args.size[0]}x{args.size[1]}; "
          f"1 actor ideal {ideal:.1f} s")
    print(f"{'actors':>6} {'seconds':>8} {'frames/s':>9} {'speed-up':>9} {'efficiency':>10} "
          f"{'stylizing s':>11} {'its eff.':>8} {'LPT bound':>9} {'planned':>7} "
          f"{'plan+encode s':>13}")
    for row in rows:
        print(f"{row['actors']:>6} {row['seconds']:>8.2f} {row['frames_per_second']:>9.2f} "
              f"{row['speedup']:>9.2f} {row['efficiency']:>10.2f} "
              f"{row['stylize_seconds']:>11.2f} {row['stylize_efficiency']:>8.2f} "
              f"{row['lpt_bound']:>9.2f} {row['planned_bound']:>7.2f} "
              f"{row['plan_seconds'] + row['encode_seconds']:>13.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "frame_seconds": args.frame_seconds,
            "shots": lengths, "frames": frames, "size": args.size,
            "max_segment_frames": args.max_segment_frames, "overlap": args.overlap,
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

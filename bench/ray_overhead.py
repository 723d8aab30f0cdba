"""The Ray path's cost per frame against the local path, same engine, one actor.

    python bench/ray_overhead.py                  # 128 px, 12 frames, full-width net, ~4 min
    python bench/ray_overhead.py --frames 12 --max-side 128 --repeats 5 --json out.json

Both run one video job end to end (plan pass, every frame, encode, verify) with the real
engine: the full-width VGG-19 with random weights (written to a temp folder; speed is that of
the real network, the images mean nothing), the shipped style and video settings except
style.iterations (--cold-iterations, the first frame's budget), on a synthetic moving texture.
- local: `nstd.pipeline.run_job` in this process (what a worker process runs), torch threads
  = the cores;
- ray: `nstd.cluster.driver.run_job` on a pool of one actor (`ray.init(num_cpus=cores)`, the
  actor with the same threads), timed after the actor has loaded the network, as a daemon's
  would have: the source through the object store, the unit's frames back as 16-bit PNGs,
  stored here, then encoded here.
Runs alternate local/ray --repeats times; the overhead is (ray - local) / local of the
medians, and per frame; and the median of each ray run against the local run just before it.
Bar (issue 11): <= 5 % at 128 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--max-side", type=int, default=128)
    parser.add_argument("--cold-iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(cores)
    import ray
    import torch

    from nstd.cluster.backend import RayBackend
    from nstd.cluster.driver import run_job as run_on_ray
    from nstd.config import parse_config, to_mapping
    from nstd.daemon.engines import EngineCache
    from nstd.daemon.jobspec import JobSpec
    from nstd.job import JobRequest
    from nstd.pipeline import run_job as run_locally
    from nstd.testing.media import write_test_clip
    from nstd.testing.weights import write_random_vgg19

    torch.set_num_threads(cores)
    folder = Path(tempfile.mkdtemp(prefix="nstd-overhead-"))
    weights = write_random_vgg19(folder / "vgg19.pth", seed=0, width_divisor=1)
    clip = write_test_clip(folder / "clip.mp4", frames=args.frames,
                           size=(args.max_side, args.max_side * 3 // 4))
    style = ROOT / "styles" / "mosaic.png"
    config = parse_config({"model": {"weights": str(weights), "device": "cpu"},
                           "style": {"max_side": args.max_side,
                                     "iterations": args.cold_iterations},
                           "daemon": {"workers": 1}, "cluster": {"backend": "ray"}})
    engines = EngineCache.load(config.model)
    stylizer = engines.stylizer(config)
    os.environ.setdefault("RAY_worker_niceness", "0")  # as nstd.cluster.backend.start_ray
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    backend = RayBackend(config)
    pool = backend._pool()
    pool.ready.wait(300)
    local_s: list[float] = []
    ray_s: list[float] = []
    try:
        for k in range(args.repeats):
            out = folder / f"local{k}.mp4"
            t0 = time.monotonic()
            run_locally(JobRequest(source=clip, output=out, styles=(style,), blend=(1.0,),
                                   config=config, work_dir=folder / f"lw{k}"), stylizer)
            local_s.append(time.monotonic() - t0)
            spec = JobSpec(job_id=k + 1, name=clip.name, source=str(clip), kind="video",
                           styles=(str(style),), config=to_mapping(config),
                           work_dir=str(folder / f"rw{k}"), output=str(folder / f"ray{k}.mp4"))
            events: list[dict[str, Any]] = []
            t0 = time.monotonic()
            run_on_ray(spec, pool, events.append, lambda: False, order=k + 1, key=f"o{k}")
            ray_s.append(time.monotonic() - t0)
            if events[-1].get("event") != "published":
                raise SystemExit(f"the Ray run failed: {events[-1]}")
            print(f"run {k + 1}: local {local_s[-1]:.1f} s, ray {ray_s[-1]:.1f} s", flush=True)
    finally:
        backend.close()
        ray.shutdown()
    local, remote = statistics.median(local_s), statistics.median(ray_s)
    overhead = (remote - local) / local
    # Each ray run against the local run just before it: slow drifts of the machine cancel.
    paired = [(r - lo) / lo for lo, r in zip(local_s, ray_s, strict=True)]
    print(f"{args.frames} frames at {args.max_side} px, full-width random VGG-19, "
          f"{cores} threads:")
    print(f"  local {local:.2f} s ({local / args.frames:.3f} s/frame), ray (1 actor) "
          f"{remote:.2f} s ({remote / args.frames:.3f} s/frame)")
    print(f"  overhead {100 * overhead:+.1f} % ({(remote - local) / args.frames * 1000:+.0f} "
          "ms/frame) of the medians; paired runs: median "
          f"{100 * statistics.median(paired):+.1f} %, from {100 * min(paired):+.1f} to "
          f"{100 * max(paired):+.1f} %")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {cores} cores",
            "frames": args.frames, "max_side": args.max_side,
            "cold_iterations": args.cold_iterations, "local_seconds": local_s,
            "ray_seconds": ray_s, "overhead": overhead, "paired_overheads": paired,
            "paired_median": statistics.median(paired)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

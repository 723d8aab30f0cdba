"""cluster.backend: ray — a video's units on several actors, actor deaths, the daemon end to end.

A local Ray (``ray.init(num_cpus=2, include_dashboard=False)``) on loopback, started once for
the module. Actors run the real engine with the slim random-weights network on tiny frames,
or (scheduling only) a simulated GPU that sleeps per frame.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from nstd.cluster.backend import SIMULATE_ENV, RayBackend
from nstd.cluster.driver import run_job
from nstd.config import LimitsConfig, parse_config, to_mapping
from nstd.daemon.jobspec import JobSpec
from nstd.media.container import iter_frames, probe_video
from nstd.testing.media import write_test_image
from nstd.testing.shots import write_shots_clip
from nstd.testing.stored import count_stored_frames

SIZE = (48, 32)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def settings(weights: Path, **cluster: Any) -> dict[str, Any]:
    return {"model": {"weights": str(weights), "device": "cpu"},
            "style": {"max_side": max(SIZE), "iterations": 6, "coarse_iterations": 2},
            "video": {"frame_iterations": 3},
            "daemon": {"workers": 2, "max_attempts": 3},
            "cluster": {"backend": "ray", **cluster}}


def job(tmp_path: Path, clip: Path, config: Any, job_id: int = 1) -> JobSpec:
    style = tmp_path / "style.png"
    if not style.exists():
        write_test_image(style, size=(32, 32), seed=5)
    return JobSpec(job_id=job_id, name=clip.name, source=str(clip), kind="video",
                   styles=(str(style),), config=to_mapping(config),
                   work_dir=str(tmp_path / f"work{job_id}"),
                   output=str(tmp_path / f"out{job_id}.mp4"))


def decoded(path: Path) -> list[np.ndarray]:
    info = probe_video(path, LimitsConfig())
    return [f.rgb for f in iter_frames(path, info)]


def run_on_cluster(spec: JobSpec, config: Any, *, during: Any = None) -> tuple[dict, Any]:
    backend = RayBackend(config)
    pool = backend._pool()
    events: list[dict[str, Any]] = []
    watcher = None
    if during is not None:
        watcher = threading.Thread(target=during, args=(pool, spec), daemon=True)
        watcher.start()
    try:
        run_job(spec, pool, events.append, lambda: False, order=1, key=f"t{spec.job_id}")
    finally:
        if watcher is not None:
            watcher.join(30)
        backend.close()
    return events[-1], pool


@pytest.mark.parametrize("wire_format", ["png16", "png8"])
def test_shots_on_two_actors_equal_one_workers_output(tmp_path, vgg_weights_path, wire_format,
                                                      monkeypatch):
    """png8 frames on the wire lose nothing the output keeps: the encoder rounds to 8 bits."""
    from nstd.job import JobRequest
    from nstd.pipeline import run_job as run_locally

    clip = write_shots_clip(tmp_path / "shots.mp4", shots=3, frames_per_shot=6, size=SIZE)
    base = settings(vgg_weights_path)
    config = parse_config(base | {"cluster": base["cluster"] | {"wire_format": wire_format}})
    spec = job(tmp_path, clip, config)
    from nstd.temporal.store import FrameStore

    depths: set[int] = set()  # a PNG's bit depth is byte 24 (IHDR)
    real_save = FrameStore.save_bytes
    monkeypatch.setattr(FrameStore, "save_bytes", lambda self, index, png, record: (
        depths.add(png[24]), real_save(self, index, png, record)))
    end, pool = run_on_cluster(spec, config)
    assert depths == {16 if wire_format == "png16" else 8}
    assert end["event"] == "published", end
    assert "3 units" in end["summary"]

    # One worker: the local path in this process (1 thread, as each actor here).
    from nstd.daemon.engines import EngineCache

    engines = EngineCache.load(config.model)
    local = tmp_path / "local.mp4"
    run_locally(JobRequest(source=clip, output=local, styles=spec.styles and
                           tuple(Path(s) for s in spec.styles), blend=(1.0,), config=config,
                           work_dir=tmp_path / "local-work"), engines.stylizer(config))
    ours, theirs = decoded(Path(spec.output)), decoded(local)
    assert len(ours) == len(theirs) == 18
    different = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                 if not np.array_equal(a, b)]
    assert different == []


def test_an_actor_killed_mid_segment_the_unit_resumes_elsewhere_exactly_once(
        tmp_path, vgg_weights_path, monkeypatch):
    clip = write_shots_clip(tmp_path / "long.mp4", shots=1, frames_per_shot=24, size=SIZE)
    config = parse_config(settings(vgg_weights_path, max_unit_frames=12, unit_overlap=3))
    spec = job(tmp_path, clip, config, job_id=2)
    saved = count_stored_frames(monkeypatch)
    killed: list[int] = []

    def kill_one_busy_actor(pool, spec):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [p for p in pool.places if p.task is not None and p.frames >= 3]
            if busy:
                killed.append(busy[0].index)
                pool.kill_actor(busy[0].index)
                return
            time.sleep(0.01)

    end, pool = run_on_cluster(spec, config, during=kill_one_busy_actor)
    assert killed, "no actor was busy long enough to be killed"
    assert end["event"] == "published", end
    assert len(decoded(Path(spec.output))) == 24
    assert sorted(saved) == list(range(24))  # every frame stored once: none lost, none redone
    assert not Path(spec.work_dir).exists()


def test_simulated_units_spread_over_three_actors(tmp_path, vgg_weights_path,
                                                  monkeypatch):
    monkeypatch.setenv(SIMULATE_ENV, "0.02")
    clip = write_shots_clip(tmp_path / "many.mp4", shots=4, frames_per_shot=6, size=SIZE)
    config = parse_config(settings(vgg_weights_path) | {"daemon": {"workers": 3}})
    spec = job(tmp_path, clip, config, job_id=3)
    end, pool = run_on_cluster(spec, config)
    assert end["event"] == "published", end
    assert len(decoded(Path(spec.output))) == 24


def test_the_daemon_with_cluster_ray_processes_a_dropped_video(tmp_path, vgg_weights_path):
    from nstd.testing.site import Site, kill_all

    site = Site.create(tmp_path / "site", vgg_weights_path,
                       daemon={"workers": 2},
                       cluster={"backend": "ray", "max_unit_frames": 6, "unit_overlap": 2})
    try:
        daemon = site.start("ray", RAY_ADDRESS="")
        clip = write_shots_clip(tmp_path / "drop.mp4", shots=2, frames_per_shot=8, size=SIZE)
        site.inbox.mkdir(parents=True, exist_ok=True)
        (site.inbox / "drop.mp4").write_bytes(clip.read_bytes())
        outputs = daemon.wait_for(lambda: [p for p in site.outbox.rglob("*.mp4")
                                           if not p.name.startswith(".")], timeout=120,
                                  what="the stylized video")
        assert len(decoded(outputs[0])) == 16
        daemon.wait_for(lambda: (site.done / "drop.mp4").exists(), timeout=30,
                        what="the source moved to done/")
        assert "actor 1 ready" in daemon.log() and "actor 2 ready" in daemon.log()
        status = daemon.wait_for(lambda: (out := site.nstd("status").stdout) and
                                 "actor 2: idle on" in out and out, timeout=20,
                                 what="nstd status listing the actors")
        assert "actors:" in status and "(cpu)" in status
        assert daemon.stop() == 0
    finally:
        kill_all()


def test_a_unit_whose_actor_dies_max_attempts_times_fails_its_job(tmp_path, vgg_weights_path,
                                                                  monkeypatch):
    """The same fault three times: a unit that kills its actor every time must not loop."""
    monkeypatch.setenv(SIMULATE_ENV, "0.05")
    clip = write_shots_clip(tmp_path / "poison.mp4", shots=1, frames_per_shot=40, size=SIZE)
    config = parse_config(settings(vgg_weights_path) | {"daemon": {
        "workers": 1, "max_attempts": 3}})
    spec = job(tmp_path, clip, config, job_id=4)
    kills: list[int] = []

    def kill_it_every_time(pool, spec):
        deadline = time.monotonic() + 60
        while len(kills) < 3 and time.monotonic() < deadline:
            place = pool.places[0]
            if place.task is not None and place.frames >= 2 and not place.killed:
                kills.append(place.frames)
                pool.kill_actor(0)
            time.sleep(0.01)

    end, pool = run_on_cluster(spec, config, during=kill_it_every_time)
    assert len(kills) == 3
    assert end["event"] == "failed", end
    assert "died 3 times" in end["reason"]
    assert not Path(spec.output).exists()


def test_seams_and_encoding_start_while_other_units_still_run(tmp_path, vgg_weights_path,
                                                              monkeypatch):
    """One actor, three shots each split in two: a seam pass runs as soon as both of its
    units are done, and frames are encoded as soon as they are final, not after the last."""
    from nstd.media.container import VideoWriter
    from nstd.temporal.store import FrameStore

    monkeypatch.setenv(SIMULATE_ENV, "0.02")
    clip = write_shots_clip(tmp_path / "three.mp4", shots=3, frames_per_shot=16, size=SIZE)
    config = parse_config(settings(vgg_weights_path, max_unit_frames=8, unit_overlap=2)
                          | {"daemon": {"workers": 1}})
    spec = job(tmp_path, clip, config, job_id=5)
    timeline: list[tuple[str, int]] = []
    real_save, real_side = FrameStore.save_bytes, FrameStore.save_side_bytes
    real_write = VideoWriter.write

    def save(self, index, png, record):
        real_save(self, index, png, record)
        timeline.append(("frame", index))

    def save_side(self, index, png, side):
        real_side(self, index, png, side)
        timeline.append((side, index))

    def write(self, rgb, pts):
        timeline.append(("encoded", 0))
        return real_write(self, rgb, pts)

    monkeypatch.setattr(FrameStore, "save_bytes", save)
    monkeypatch.setattr(FrameStore, "save_side_bytes", save_side)
    monkeypatch.setattr(VideoWriter, "write", write)
    end, _ = run_on_cluster(spec, config)
    assert end["event"] == "published", end
    assert len(decoded(Path(spec.output))) == 48
    kinds = [kind for kind, _ in timeline]
    last_frame = len(kinds) - 1 - kinds[::-1].index("frame")
    assert kinds.index("seam") < last_frame, "the first seam pass waited for every unit"
    assert kinds.index("encoded") < last_frame, "encoding waited for every unit"
    assert sorted(i for kind, i in timeline if kind == "frame") == list(range(48))
    assert kinds.count("seam") == 3 * 2 and kinds.count("encoded") == 48


def test_a_masked_image_on_the_cluster_equals_the_local_result(tmp_path, vgg_weights_path):
    """The masks travel with the job: each style in its own region, as in a local run."""
    from PIL import Image

    from nstd.daemon.engines import EngineCache
    from nstd.job import JobRequest
    from nstd.pipeline import run_job as run_locally

    config = parse_config(settings(vgg_weights_path))
    photo = write_test_image(tmp_path / "photo.png", size=SIZE, seed=3)
    styles = [write_test_image(tmp_path / f"style{i}.png", size=(32, 32), seed=5 + i)
              for i in range(2)]
    masks = []
    for i in range(2):
        mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
        (mask[: SIZE[1] // 2] if i == 0 else mask[SIZE[1] // 2:]).fill(255)  # top, bottom
        masks.append(tmp_path / f"{i}.half.mask.png")
        Image.fromarray(mask, "L").save(masks[-1])
    spec = JobSpec(job_id=7, name="photo.png", source=str(photo), kind="image",
                   styles=tuple(map(str, styles)), masks=tuple(map(str, masks)),
                   config=to_mapping(config), work_dir=str(tmp_path / "work7"),
                   output=str(tmp_path / "out7.png"))
    end, _ = run_on_cluster(spec, config)
    assert end["event"] == "published", end

    local = tmp_path / "local.png"
    run_locally(JobRequest(source=photo, output=local, styles=tuple(styles), blend=(1.0, 1.0),
                           config=config, masks=tuple(masks)),
                EngineCache.load(config.model).stylizer(config))
    ours = np.asarray(Image.open(spec.output))
    theirs = np.asarray(Image.open(local))
    assert ours.shape == theirs.shape == (SIZE[1], SIZE[0], 3)
    assert np.array_equal(ours, theirs)
    unmasked = tmp_path / "unmasked.png"
    run_locally(JobRequest(source=photo, output=unmasked, styles=tuple(styles),
                           blend=(1.0, 1.0), config=config),
                EngineCache.load(config.model).stylizer(config))
    assert not np.array_equal(ours, np.asarray(Image.open(unmasked)))  # the masks did act


def _stream(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """An event stream as the supervisor reads it: heartbeats dropped, a run of progress
    events of one stage as one (with the last one's done/total for frames), the end event
    with its kind and reason (not the summary's wording or timing)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if event["event"] == "heartbeat":
            continue
        if event["event"] == "progress":
            step: tuple[Any, ...] = ("progress", event["stage"])
            if event["stage"] == "frame":
                step += (event["done"], event["total"])
            if out and out[-1][:2] == step[:2]:
                out[-1] = step
            else:
                out.append(step)
        else:
            out.append((event["event"], event.get("kind"), event.get("reason")))
    return out


def test_the_local_worker_and_the_cluster_driver_send_the_same_event_stream(
        tmp_path, vgg_weights_path):
    """Both runners are adapters over one job lifecycle (`nstd.daemon.lifecycle`): for the
    same job, the supervisor sees the same stages, the same last frame count and the same
    ending, whether a worker process or the Ray driver ran it."""
    from nstd.daemon.engines import EngineCache
    from nstd.daemon.worker import execute

    config = parse_config(settings(vgg_weights_path))
    engines = EngineCache.load(config.model)
    clip = write_shots_clip(tmp_path / "shots.mp4", shots=2, frames_per_shot=4, size=SIZE)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    streams = []
    backend = RayBackend(config)  # one pool for both jobs: its actors start once
    try:
        for number, source in enumerate((clip, broken)):
            local: list[dict[str, Any]] = []
            execute(job(tmp_path, source, config, job_id=10 + number), engines, local.append,
                    lambda: False)
            cluster: list[dict[str, Any]] = []
            run_job(job(tmp_path, source, config, job_id=20 + number), backend._pool(),
                    cluster.append, lambda: False, order=1, key=f"s{number}")
            assert _stream(cluster) == _stream(local)
            streams.append(_stream(local))
    finally:
        backend.close()
    published, failed = streams
    assert published[-3:] == [("progress", "frame", 8, 8), ("progress", "encode"),
                              ("published", None, None)]
    assert failed[-1][:2] == ("failed", "input")

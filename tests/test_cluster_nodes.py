"""cluster.backend: ray — a node of the cluster gone mid-unit (issue 11, Faults).

A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): the head (the
supervisor's node, as `nstd` joins it) and two worker nodes, one CPU each. The actors take
one CPU each (real engine, slim random-weights network), so two actors sit on two different
nodes and the third node has room for a replacement. Each node's raylet gets its own TMPDIR,
so each node has its own actor cache (`nstd.cluster.actor.CACHE_ROOT`), as on separate
machines.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from nstd.cluster.actor import CACHE_ROOT
from nstd.cluster.backend import RayBackend
from nstd.cluster.driver import run_job
from nstd.config import LimitsConfig, parse_config, to_mapping
from nstd.daemon.jobspec import JobSpec
from nstd.media.container import iter_frames, probe_video
from nstd.testing.media import write_test_image
from nstd.testing.shots import write_shots_clip
from nstd.testing.stored import count_stored_frames

SIZE = (48, 32)
FRAMES = 24


class Nodes:
    """The cluster: its head, its worker nodes by name, and each node's own temp dir."""

    def __init__(self, cluster: Cluster, workers: dict[str, Any], tmp: dict[str, Path]) -> None:
        self.cluster, self.workers, self.tmp = cluster, workers, tmp

    def name_of(self, node_id: str) -> str:
        if node_id == self.cluster.head_node.node_id:
            return "head"
        return next(name for name, node in self.workers.items() if node.node_id == node_id)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory):
    # tests/test_cluster.py's module-scoped local Ray has been shut down by now (pytest
    # tears a module's fixtures down before the next module's); a Ray left connected by
    # anything else would make RayBackend use it instead of this cluster.
    assert not ray.is_initialized(), "a Ray instance is still connected in this process"
    tempfile.gettempdir()  # this process's temp dir is decided before any node's is set
    root = tmp_path_factory.mktemp("nodes")
    tmp = {name: root / name for name in ("head", "a", "b")}
    for folder in tmp.values():
        folder.mkdir()
    # A pool thread still starting an actor as Ray shuts down must not silently connect
    # (or start) another Ray: `ray.*` calls without ray.init then raise instead.
    hook = ray._private.auto_init_hook
    auto_connect, hook.enable_auto_connect = hook.enable_auto_connect, False
    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(num_cpus=1, include_dashboard=False,
                         env_vars={"TMPDIR": str(tmp["head"])})
        workers = {name: cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(tmp[name])})
                   for name in ("a", "b")}
        ray.init(address=cluster.address, log_to_driver=False)
        yield Nodes(cluster, workers, tmp)
    finally:
        ray.shutdown()
        cluster.shutdown()
        hook.enable_auto_connect = auto_connect


def node_of(actor: Any) -> str:
    """The Ray node id an actor runs on (the GCS's actor table: no dashboard needed)."""
    return ray._private.state.actors(actor._actor_id.hex())["Address"]["NodeID"]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc: the raylet's workers and agents)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def lose_node(nodes: Nodes, name: str) -> None:
    """Node ``name`` gone at once, as a machine that lost power: its raylet and object store
    (`Cluster.remove_node`, SIGKILL) and every process the raylet started, its actors
    included (remove_node alone leaves a running actor streaming frames for seconds)."""
    node = nodes.workers[name]
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process
    below = descendants(raylet.pid)
    nodes.cluster.remove_node(node, allow_graceful=False)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def settings(weights: Path) -> dict[str, Any]:
    return {"model": {"weights": str(weights), "device": "cpu"},
            "style": {"max_side": max(SIZE), "iterations": 6, "coarse_iterations": 2},
            "video": {"frame_iterations": 3},
            "daemon": {"workers": 2, "max_attempts": 3},
            "cluster": {"backend": "ray", "max_unit_frames": 12, "unit_overlap": 3}}


def job(tmp_path: Path, config: Any) -> JobSpec:
    clip = write_shots_clip(tmp_path / "long.mp4", shots=1, frames_per_shot=FRAMES, size=SIZE)
    style = write_test_image(tmp_path / "style.png", size=(32, 32), seed=5)
    return JobSpec(job_id=1, name=clip.name, source=str(clip), kind="video",
                   styles=(str(style),), config=to_mapping(config),
                   work_dir=str(tmp_path / "work"), output=str(tmp_path / "out.mp4"))


def wait_until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(condition())


def test_a_node_gone_mid_unit_its_unit_resumes_on_another_node_exactly_once(
        nodes, tmp_path, vgg_weights_path, monkeypatch, caplog):
    config = parse_config(settings(vgg_weights_path))
    spec = job(tmp_path, config)
    saved = count_stored_frames(monkeypatch)
    caplog.set_level(logging.WARNING, logger="nstd.cluster")
    events: list[dict[str, Any]] = []
    removed: list[tuple[int, str, str]] = []  # (place, node name, its unit)
    backend = RayBackend(config)  # joins the connected cluster: ray.init is not called again
    try:
        pool = backend._pool()
        assert wait_until(lambda: all(p.actor is not None for p in pool.places), 60), \
            "the two actors did not start"
        tasks: list[Any] = []  # every submit: the job's units, and each re-queued one again
        real_submit = pool.submit

        def submit(task: Any) -> None:
            tasks.append(task)
            real_submit(task)

        monkeypatch.setattr(pool, "submit", submit)
        first = {p.index: nodes.name_of(node_of(p.actor)) for p in pool.places}
        assert len(set(first.values())) == 2, f"the two actors share a node: {first}"

        def remove_the_node_of_a_busy_actor() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not removed:
                for place in pool.places:  # the head is the driver's node: it stays
                    task = place.task
                    if task is None or first[place.index] == "head" or "seam" in task.label:
                        continue
                    if place.frames >= 3 and task.frames - place.frames >= 6:  # mid-unit
                        removed.append((place.index, first[place.index], task.label))
                        lose_node(nodes, first[place.index])
                        break
                time.sleep(0.01)

        remover = threading.Thread(target=remove_the_node_of_a_busy_actor, daemon=True)
        remover.start()
        run_job(spec, pool, events.append, lambda: False, order=1, key="nodes1")
        remover.join(30)
        assert removed, "no actor on a worker node was busy long enough to lose its node"
        lost, gone, label = removed[0]
        assert wait_until(lambda: pool.places[lost].actor is not None, 60), \
            "the lost actor was not replaced"
        after = {p.index: nodes.name_of(node_of(p.actor)) for p in pool.places}
    finally:
        backend.close()

    assert events[-1]["event"] == "published", events[-1]
    info = probe_video(Path(spec.output), LimitsConfig())
    assert sum(1 for _ in iter_frames(Path(spec.output), info)) == FRAMES
    assert sorted(saved) == list(range(FRAMES))  # every frame stored once: none lost, none redone
    assert not Path(spec.work_dir).exists()
    # The node loss cut its unit short (not after it had finished): one death, re-queued.
    units = list({id(task): task for task in tasks}.values())
    assert [task.label for task in units if task.deaths] == [label], units
    assert sum(task.deaths for task in units) == 1
    said = [r.getMessage() for r in caplog.records if "goes back to the queue" in r.getMessage()]
    assert len(said) == 1 and label in said[0], said
    # The new actor sits on the one node with a free CPU: neither the gone one nor the
    # surviving actor's.
    survivor = first[1 - lost]
    assert after[1 - lost] == survivor
    assert after[lost] == ({"head", "a", "b"} - {gone, survivor}).pop()

    # Each node caches the job's files in its own temp dir (one copy each); the actors
    # ran on their node's disk, not on the supervisor's temp dir.
    for name in {gone, survivor}:
        cached = nodes.tmp[name] / CACHE_ROOT.name / "nodes1"
        assert sorted(p.name for p in cached.iterdir()) == ["long.mp4", "style-style.png"]
        assert (cached / "long.mp4").read_bytes() == Path(spec.source).read_bytes()
    assert not (CACHE_ROOT / "nodes1").exists()

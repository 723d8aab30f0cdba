"""``cluster.backend: ray``: the supervisor's workers are places on a shared actor pool.

The supervisor (`nstd.daemon.supervisor`) hands jobs to ``spawn``-ed handles and reads their
events; here a handle (`ClusterWorker`) runs its job with `nstd.cluster.driver` in a thread of
the supervisor's process, on the actors of one `ActorPool`. There are as many handles as
actors, so a queue of images keeps every actor busy, and one video alone is cut into units
that spread over all of them.

Ray: ``cluster.ray_address`` null starts (or joins) a Ray instance on this machine; ``auto`` or
``ray://host:10001`` joins an existing cluster. One actor per GPU of the cluster
(``num_gpus=1``), or ``daemon.workers`` of them; on a cluster without GPUs, CPU actors of
``num_cpus`` = the cores shared out.

`SIMULATE_ENV` (tests and bench/scaling.py only): actors that sleep that many seconds per
frame instead of loading the network ("simulated GPU"), so the scheduling can be measured on
a machine without GPUs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nstd.cluster.pool import ActorPool
from nstd.cluster.status import CLUSTER_STATUS
from nstd.config import Config, to_mapping
from nstd.daemon.jobspec import JobSpec
from nstd.daemon.pool import WorkerPlan
from nstd.errors import ConfigError

log = logging.getLogger("nstd.cluster")

SIMULATE_ENV = "NSTD_SIMULATE_FRAME_SECONDS"
STATUS_SECONDS = 2.0


def start_ray(address: str | None, *, num_cpus: int | None = None) -> Any:
    """Connect to (or start) Ray once per process; returns the ray module."""
    try:
        import ray
    except ImportError:
        raise ConfigError(["cluster.backend: ray needs the ray package; "
                           "install it with pip install 'nstd[ray]'"]) from None
    if not ray.is_initialized():
        # Ray starts its workers at nice 15 (favouring its own daemons); then any other
        # process on the machine, the supervisor included, takes the cores the actors'
        # decoding, flow and CPU torch threads need (bench/ray_overhead.py: +47 % per frame
        # at nice 15, +28 % at 0). An instance started here runs them at the supervisor's.
        os.environ.setdefault("RAY_worker_niceness", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                  "configure_logging": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError([f"cluster.ray_address: cannot join Ray at {address or 'this'} "
                               f"machine ({exc})"]) from None
    return ray


class RayBackend:
    """The supervisor's ``backend`` for ``cluster.backend: ray``."""

    def __init__(self, config: Config, environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.simulate = float(environ.get(SIMULATE_ENV) or 0.0)
        self.ray = start_ray(config.cluster.ray_address)
        resources = self.ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0)) if config.model.device != "cpu" else 0
        cpus = max(1, int(resources.get("CPU", 1)))
        setting = config.daemon.workers
        self.count = (self.gpus or 1) if setting == "auto" else int(setting)
        self.threads = max(1, cpus // self.count)
        self.pool: ActorPool | None = None
        self._order = 0
        self._lock = threading.Lock()

    def plans(self) -> list[WorkerPlan]:
        """One place per actor (the device is Ray's business)."""
        return [WorkerPlan(None, self.threads) for _ in range(self.count)]

    def _make_actor(self) -> Any:
        from nstd.cluster.actor import StyleActor

        mapping = to_mapping(self.config)
        if self.gpus:
            mapping["model"]["device"] = "cuda"
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        elif self.simulate > 0:
            options = {"num_cpus": 0}  # a sleep needs no core: 8 fit on 2
        else:
            options = {"num_cpus": self.threads}
        env = {"OMP_NUM_THREADS": str(self.threads)}
        for name in ("NSTD_FAILPOINTS",):
            if os.environ.get(name):
                env[name] = os.environ[name]
        remote = self.ray.remote(max_concurrency=2)(StyleActor)  # run() and stop() at once
        return remote.options(**options, runtime_env={"env_vars": env}).remote(
            mapping, self.threads, self.simulate)

    def _pool(self) -> ActorPool:
        with self._lock:
            if self.pool is None:
                self.pool = ActorPool(self.count, self._make_actor,
                                      stall_seconds=self.config.daemon.stall_seconds,
                                      max_deaths=self.config.daemon.max_attempts)
                self.pool.start()
                threading.Thread(target=self._publish_places, daemon=True,
                                 name="cluster-status").start()
            return self.pool

    def _publish_places(self) -> None:
        """`<state>/cluster.json` every STATUS_SECONDS: each actor's node, device, unit and
        frames/s, for `nstd status` (another process: it cannot ask the pool)."""
        path = Path(self.config.daemon.state) / CLUSTER_STATUS
        while self.pool is not None and not self.pool.closed:
            try:
                data = json.dumps({"time": time.time(), "actors": self.pool.describe()})
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(data)
                os.replace(tmp, path)
            except OSError:
                pass  # status only: the next round tries again
            time.sleep(STATUS_SECONDS)

    def spawn(self, index: int, plan: WorkerPlan,
              deliver: Callable[[dict[str, Any] | None], None], *,
              first: bool = True) -> ClusterWorker:
        return ClusterWorker(self, self._pool(), deliver)

    def next_order(self) -> int:
        with self._lock:
            self._order += 1
            return self._order

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class ClusterWorker:
    """A worker place for the supervisor: runs one job at a time on the pool, in a thread.

    Looks like `nstd.daemon.pool.WorkerProcess` (send, poll, wait, kill, pid): a job message
    starts the job, a park message (a pause) ends it between frames, a stop message ends it
    and the place.
    """

    def __init__(self, backend: RayBackend, pool: ActorPool,
                 deliver: Callable[[dict[str, Any] | None], None]) -> None:
        self.backend = backend
        self.pool = pool
        self.pid = os.getpid()
        self._deliver = deliver
        self._stopping = threading.Event()
        self._parking = threading.Event()
        self._thread: threading.Thread | None = None
        self._job: int | None = None
        self.returncode: int | None = None
        threading.Thread(target=self._announce, daemon=True, name="cluster-ready").start()

    def _announce(self) -> None:
        self.pool.changed.wait()
        if not self.pool.ready.is_set():
            self._deliver({"event": "fatal", "reason": self.pool.fatal})
            self.returncode = 2
            return
        devices = sorted({str(p.info.get("device")) for p in self.pool.places if p.info})
        self._deliver({"event": "ready", "device": f"ray ({', '.join(devices) or '?'})",
                       "pid": self.pid})

    def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "park":  # a pause: this job stops between frames, the place stays up
            self._parking.set()
        elif kind == "job":
            spec = JobSpec.from_dict(message["spec"])
            self._parking.clear()
            self._job = spec.job_id
            self._thread = threading.Thread(target=self._run, args=(spec,), daemon=True,
                                            name=f"job-{spec.job_id}")
            self._thread.start()
        elif kind == "stop":
            self._stopping.set()
            if self._thread is None or not self._thread.is_alive():
                self.returncode = 0

    def _run(self, spec: JobSpec) -> None:
        from nstd.cluster.driver import run_job

        key = f"job{spec.job_id}-{os.path.getsize(spec.source)}"
        run_job(spec, self.pool, self._deliver,
                lambda: self._stopping.is_set() or self._parking.is_set(),
                order=self.backend.next_order(), key=key)
        if self._stopping.is_set():
            self.returncode = 0

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive() and self._stopping.is_set():
                self.returncode = 0
        return self.returncode

    def kill(self) -> None:
        """The supervisor gave up on this place (stalled): end its job's units."""
        self._stopping.set()
        if self._job is not None:
            self.pool.cancel(self._job)
        self.returncode = -9

"""The supervisor's worker places: start, restart with backoff, kill when stalled, read their
messages, and publish what the status page shows.

A `Slot` is one place (`daemon.workers` of them): its handle (a process, an in-process worker
or a Ray place; `nstd.daemon.backend`), its state (down | starting | idle | busy | exited)
and the job it runs with that job's live progress. Only the supervisor loop touches slots;
other threads (the status page) read `WorkerSlots.snapshot`, frozen copies the loop publishes
at the end of each step.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nstd.config import DaemonConfig
from nstd.daemon.backend import Backend, WorkerHandle
from nstd.daemon.jobspec import JobSpec
from nstd.daemon.ledger import Job, Ledger
from nstd.daemon.pool import WorkerPlan
from nstd.daemon.space import Need, SpaceGuard, stored_frames
from nstd.progress import format_duration
from nstd.text import plural

log = logging.getLogger("nstd.daemon.supervisor")

PROGRESS_LOG_SECONDS = 10.0  # one progress line per job this often
HEARTBEAT_SECONDS = 1.0  # lease renewal and progress rows while a job runs, at most this often
RESTART_BACKOFF_MAX = 30.0  # a worker that dies before "ready" again and again: restart delay
START_SECONDS = 300.0  # a worker loading torch and the network may take this long to be ready
STAGES = {"probe": "checking", "plan": "planning", "frame": "frame", "iteration": "iteration",
          "verify": "verifying", "encode": "encoding"}


@dataclass
class Slot:
    """One worker place: its process (restarted when it dies) and the job it runs."""

    index: int
    plan: WorkerPlan
    handle: WorkerHandle | None = None
    generation: int = 0
    state: str = "down"  # down | starting | idle | busy | exited
    job: Job | None = None
    spec: JobSpec | None = None
    since: float = 0.0  # monotonic: when the state (or the job) began
    heard: float = 0.0  # monotonic: its last message
    stage: str = ""
    done: int = 0
    total: int = 0
    eta: float | None = None
    losses: list[float] | None = None  # a video's frame losses so far, summarized (page)
    device: str | None = None  # what its "ready" event said (cpu, cuda:0, ray (...))
    last_write: float = float("-inf")
    last_renew: float = float("-inf")
    last_log: float = float("-inf")
    restart_at: float = 0.0
    quick_deaths: int = 0  # deaths before "ready", in a row: restart backoff
    killed_for: str | None = None  # why we SIGKILLed it (stalled)
    parked: int | None = None  # the job it was asked to park (paused, or short of space)
    eof: bool = False
    need: Need | None = None  # what its job writes (nstd.daemon.space)

    @property
    def name(self) -> str:
        return f"worker {self.index + 1}"

    def busy_with(self, job: Job, spec: JobSpec, mono: float) -> None:
        """The slot takes ``job``: its progress starts over."""
        self.state, self.job, self.spec = "busy", job, spec
        self.since = self.heard = mono
        self.stage, self.done, self.total, self.eta = "starting", 0, 0, None
        self.losses = None
        self.last_write = self.last_log = self.last_renew = float("-inf")

    def free(self, mono: float) -> None:
        """Its job ended (published or failed): the slot is idle again."""
        self.state, self.since, self.job, self.spec, self.need = "idle", mono, None, None, None

    def where(self) -> str:
        """"frame 3/10, ETA 1 min" (or "starting"): the STATUS= line's view of its job."""
        if not self.total:
            return "starting"
        return (f"{STAGES.get(self.stage, self.stage)} {self.done}/{self.total}, "
                f"ETA {format_duration(self.eta)}")


@dataclass(frozen=True)
class WorkerView:
    """What the status page shows of one worker: a copy, safe to read from any thread."""

    name: str
    state: str
    pid: int | None
    device: str | None  # what it said it runs on, else the CUDA device it is pinned to
    since: float  # monotonic: when its state (or its job) began
    job: int | None = None
    source: str | None = None
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    eta: float | None = None
    frame_losses: tuple[float, ...] | None = None


def view_of(slot: Slot) -> WorkerView:
    pid = slot.handle.pid if slot.handle is not None else None
    device = slot.device or slot.plan.device
    job = slot.job
    if job is None:
        return WorkerView(slot.name, slot.state, pid, device, slot.since)
    losses = tuple(slot.losses) if slot.losses is not None else None
    return WorkerView(slot.name, slot.state, pid, device, slot.since, job.id, job.source,
                      slot.stage, slot.done, slot.total, slot.eta, losses)


@dataclass(frozen=True)
class Message:
    """A worker's event (None: its pipe closed), tagged with the process it came from."""

    index: int
    generation: int
    data: dict[str, Any] | None


class WorkerSlots:
    """The slots, and what the loop does to them that does not decide a job's fate: start,
    restart, stall kill, ready and fatal messages, live progress. ``events`` is the loop's
    queue (worker messages arrive there as `Message`s)."""

    def __init__(self, plans: list[WorkerPlan], backend: Backend,
                 events: queue.SimpleQueue[Any], ledger: Ledger, config: DaemonConfig) -> None:
        self.slots = [Slot(i, plan) for i, plan in enumerate(plans)]
        self.backend = backend
        self.events = events
        self.ledger = ledger
        self.stall_seconds = config.stall_seconds
        self.lease_seconds = config.lease_seconds
        self._ledger_warned = False
        self._lock = threading.Lock()
        self._views: tuple[WorkerView, ...] = tuple(view_of(s) for s in self.slots)

    def __iter__(self) -> Any:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int) -> Slot:
        return self.slots[index]

    def busy(self) -> bool:
        return any(slot.state == "busy" for slot in self.slots)

    def publish(self) -> None:
        """Copy the slots for other threads (the loop calls this after each step)."""
        views = tuple(view_of(slot) for slot in self.slots)
        with self._lock:
            self._views = views

    def snapshot(self) -> tuple[WorkerView, ...]:
        """The slots as of the last `publish`; safe from any thread."""
        with self._lock:
            return self._views

    def spawn(self, slot: Slot, mono: float) -> None:
        slot.generation += 1
        generation = slot.generation
        index = slot.index

        def deliver(data: dict[str, Any] | None) -> None:
            self.events.put(Message(index, generation, data))

        slot.state, slot.since, slot.heard = "starting", mono, mono
        slot.job = slot.spec = None
        slot.killed_for, slot.eof = None, False
        try:
            slot.handle = self.backend.spawn(slot.index, slot.plan, deliver,
                                             first=slot.generation == 1)
        except OSError as exc:
            log.error("cannot start %s: %s", slot.name, exc.strerror or exc)
            slot.handle, slot.state = None, "down"
            slot.restart_at = mono + RESTART_BACKOFF_MAX
            return
        where = f" on CUDA device {slot.plan.device}" if slot.plan.device is not None else ""
        log.info("%s started (pid %s%s, %s)", slot.name, slot.handle.pid, where,
                 plural(slot.plan.threads, "thread"))

    def check(self, mono: float, stopping: bool) -> list[tuple[Slot, int]]:
        """Restart the slots due, kill the stalled workers; returns the slots whose worker
        exited, with its exit status (the caller decides about their jobs)."""
        exited = []
        for slot in self.slots:
            if slot.state == "down":
                if not stopping and mono >= slot.restart_at:
                    self.spawn(slot, mono)
                continue
            if slot.state == "exited" or slot.handle is None:
                continue
            rc = slot.handle.poll()
            if rc is None and slot.eof:
                rc = slot.handle.wait(1.0)
            if rc is not None:
                exited.append((slot, rc))
            else:
                self._stall_check(slot, mono)
        return exited

    def _stall_check(self, slot: Slot, mono: float) -> None:
        assert slot.handle is not None
        silent = mono - slot.heard
        stall = self.stall_seconds
        limit = stall if slot.state == "busy" else max(stall, START_SECONDS)
        if slot.state in ("busy", "starting") and silent > limit and slot.killed_for is None:
            what = f"on {slot.job.source}" if slot.job else "while starting"
            log.error("%s (pid %s) has not reported for %.0f s %s "
                      "(limit %g s: daemon.stall_seconds); killing it", slot.name,
                      slot.handle.pid, silent, what, limit)
            slot.killed_for = f"no report for {silent:.0f} s: killed as stalled"
            slot.handle.kill()

    def exited(self, slot: Slot, mono: float, *, final: bool) -> Job | None:
        """Its worker ended: the slot is restarted later, or (``final``: the daemon stops)
        not; returns the job it ran, if any."""
        job = slot.job
        if final:
            slot.handle, slot.job, slot.spec = None, None, None
            slot.state = "exited"
        else:
            self.down(slot, mono)
        return job

    @staticmethod
    def down(slot: Slot, mono: float) -> None:
        """Its worker died: restarted at once, or after a backoff when it keeps dying
        before "ready"."""
        ready = slot.state != "starting"
        slot.handle, slot.job, slot.spec = None, None, None
        slot.state = "down"
        slot.quick_deaths = 0 if ready else slot.quick_deaths + 1
        delay = min(RESTART_BACKOFF_MAX, 0.5 * 2 ** slot.quick_deaths) if slot.quick_deaths \
            else 0.0
        slot.restart_at = mono + delay

    def take(self, message: Message, now: float,
             mono: float) -> tuple[Slot, dict[str, Any]] | None:
        """Handle a worker's message: ready, progress, heartbeat. Returns (slot, message)
        for what the supervisor decides: "fatal", and its job "published" or "failed"."""
        slot = self.slots[message.index]
        if message.generation != slot.generation:
            return None  # from a process already replaced
        data = message.data
        if data is None:
            slot.eof = True
            return None
        slot.heard = mono
        event = data.get("event")
        if event == "ready":
            slot.state, slot.since, slot.quick_deaths = "idle", mono, 0
            slot.device = str(data["device"]) if data.get("device") else None
            log.info("%s ready (device %s)", slot.name, slot.device)
        elif event == "fatal":
            return slot, data
        elif slot.job is not None and data.get("job") == slot.job.id:
            if event not in ("progress", "heartbeat"):
                return slot, data
            self.renew(slot, now, mono)
            if event == "progress":
                self.progress(slot, data, mono)
        return None

    def waits(self, mono: float, stopping: bool) -> list[float]:
        """Seconds until each slot needs the loop: leases and stall checks, restarts."""
        waits = []
        for slot in self.slots:
            if slot.state in ("busy", "starting"):
                waits.append(HEARTBEAT_SECONDS)
            elif slot.state == "down" and not stopping:
                waits.append(slot.restart_at - mono)
        return waits

    def stop_all(self, grace: float, monotonic: Callable[[], float]) -> None:
        """Wait up to ``grace`` seconds in all for the workers (told to stop) to end; kill
        those that do not."""
        deadline = monotonic() + grace
        for slot in self.slots:
            handle = slot.handle
            if handle is not None and handle.wait(max(0.0, deadline - monotonic())) is None:
                log.warning("%s (pid %s) did not stop; killing it", slot.name, handle.pid)
                handle.kill()
                handle.wait(5.0)

    def tell(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every live worker."""
        for slot in self.slots:
            if slot.handle is not None and slot.handle.poll() is None:
                slot.handle.send(message)

    def park(self, slot: Slot, why: str) -> None:
        """Ask a busy worker, once per job, to stop its job between frames: it comes back as
        "stopped" (queued again, no attempt counted, first in line; a video keeps its stored
        frames, an image starts over)."""
        if slot.state == "busy" and slot.job is not None and slot.parked != slot.job.id \
                and slot.handle is not None:
            slot.parked = slot.job.id
            log.info("%s: %s %s", slot.name, why, slot.job.source)
            slot.handle.send({"type": "park"})

    def park_short(self, space: SpaceGuard, mono: float) -> None:
        """Every CHECK_SECONDS: a running job without room for what it still has to write
        is parked between frames (stored frames kept, no attempt counted)."""
        if not space.running_check_due(mono):
            return
        for slot in self.slots:
            if slot.state == "busy" and slot.need is not None and slot.job is not None:
                stored = slot.done if slot.stage == "frame" else stored_frames(slot.job)
                shortage = space.short_for(slot.need, stored)
                if shortage is not None:
                    self.park(slot, f"{shortage.describe()}: stopping")
                    space.wait_for(shortage, mono)

    def record(self, write: Callable[..., Any], *args: Any) -> None:
        """A write that may fail while a job runs (progress, lease): logged once, ignored."""
        try:
            write(*args)
        except sqlite3.Error as exc:
            if not self._ledger_warned:
                self._ledger_warned = True
                log.warning("cannot record progress in the job ledger (%s); the job goes on",
                            exc)
        else:
            self._ledger_warned = False

    def renew(self, slot: Slot, now: float, mono: float) -> None:
        if slot.job is None or mono - slot.last_renew < HEARTBEAT_SECONDS:
            return
        slot.last_renew = mono
        # The lease only informs `nstd status` (the DaemonLock keeps other daemons out): a
        # ledger that cannot be written right now must not break the running job.
        self.record(self.ledger.renew, slot.job.id, now, self.lease_seconds)

    def progress(self, slot: Slot, data: dict[str, Any], mono: float) -> None:
        assert slot.job is not None
        slot.stage = str(data.get("stage") or "")
        slot.done, slot.total = int(data.get("done") or 0), int(data.get("total") or 0)
        slot.eta = data.get("eta")
        if "losses" in data:
            slot.losses = data["losses"]
        final = slot.total > 0 and slot.done >= slot.total
        if slot.stage in ("frame", "iteration") and (
                final or mono - slot.last_write >= HEARTBEAT_SECONDS):
            slot.last_write = mono
            self.record(self.ledger.progress, slot.job.id, slot.done, slot.total, slot.eta)
        if mono - slot.last_log >= PROGRESS_LOG_SECONDS:
            slot.last_log = mono
            log.info("%s: %s %d/%d, ETA %s", slot.job.source, STAGES.get(slot.stage,
                     slot.stage), slot.done, slot.total, format_duration(slot.eta))

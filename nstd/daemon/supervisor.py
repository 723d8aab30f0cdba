"""The daemon's lifecycle: notice files, queue them, run jobs on workers, never die of one.

    daemon = Daemon(config, ledger, engines, notifier)   # built once by `nstd run`
    daemon.run()          # start(), then step() until stop is requested, then stop()

`step(now)` does one unit of work, as huey's consumer does, so tests drive it with a fake
clock: take in watch events and worker messages, queue the files that settled, check the
workers, then claim jobs for the idle ones. Signal handlers only call `request_stop()` (a
flag, plus a wake-up for the idle wait); the CLI installs them.

This module is the loop and a job's life in it; the rest has a module each: `inbox` (the
watch, rescans, settling, known files, rechecks), `queueing` (a settled file becomes a job;
exactly once across kill -9), `claim` (a claimed job's `JobSpec` and output name), `slots`
(workers: spawn, stall kill, restart backoff, progress, the status page's snapshot),
`endings` and `failures` (published, retried, shrunk or failed for good), `space` (free disk
space), `status` (STATUS= and the watchdog), `startup` (clean-up after a crash), `backend`.

When the ledger itself cannot be written (``sqlite3.Error``: the disk is full), nothing is
decided about the job: the loop pauses (1 s, doubling to a minute), then puts the job back
and goes on. A job short of disk space waits without counting an attempt.

Outside `daemon.active_hours` or after `nstd pause` (`nstd.daemon.schedule.WorkGate`), files
are still queued but nothing is claimed, and each busy worker is sent "park" once: its job
comes back as "stopped" (released, first in line). Events go to `nstd.daemon.hooks`.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nstd.config import Config
from nstd.daemon.arrivals import new_arrivals
from nstd.daemon.backend import Backend
from nstd.daemon.claim import Claims
from nstd.daemon.endings import Endings
from nstd.daemon.failures import Failures
from nstd.daemon.hooks import Event, Hooks
from nstd.daemon.inbox import Inbox
from nstd.daemon.ledger import Job, Ledger
from nstd.daemon.notify import SystemdNotifier
from nstd.daemon.pool import ProcessBackend, WorkerPlan, describe_exit, plan_workers
from nstd.daemon.queueing import Queueing
from nstd.daemon.schedule import WorkGate
from nstd.daemon.schedule import describe as describe_pause
from nstd.daemon.slots import Message, Slot, WorkerSlots, WorkerView
from nstd.daemon.space import FreeSpace, Need, SpaceGuard, free_bytes, job_need, stored_frames
from nstd.daemon.startup import recover
from nstd.daemon.status import SystemdStatus, healthy, status_line
from nstd.faults import failpoint
from nstd.progress import format_duration
from nstd.text import plural

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 60.0  # workers get this long to park their job after a stop
EXIT_CONFIG = 2  # a worker cannot load the network: systemd must not restart us in a loop
EXIT_TRANSIENT = 1  # a worker cannot fetch the weights right now: systemd restarts us
MIN_WAIT = 0.05
MAX_WAIT = 300.0
# When the ledger cannot be written (disk full...), the loop pauses, doubling up to this.
MAX_PAUSE_SECONDS = 60.0

_WAKE = Path("\0wake")  # put on the event queue to end an idle wait (never a real path)


class Supervisor:
    """Watches the inbox, queues files, hands jobs to worker processes and records what
    they report. See the module docstring.

    ``clock`` gives ledger time (epoch seconds), ``monotonic`` the stability tracker's and the
    throttles' time; tests inject both. ``backend`` starts workers (`nstd.daemon.backend`):
    the default is real processes (`nstd.daemon.pool.ProcessBackend`); unit tests pass
    `nstd.daemon.inline.InlineBackend`. ``watch=False`` starts no watchdog observer (tests
    dispatch events to ``handler`` by hand). ``free_space`` tells the bytes free under a
    folder (`nstd.daemon.space.free_bytes`; tests pass a fake).
    """

    def __init__(self, config: Config, ledger: Ledger, notifier: SystemdNotifier | None = None,
                 *, backend: Backend | None = None, plans: list[WorkerPlan] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, watch: bool = True,
                 hooks: Hooks | None = None, free_space: FreeSpace = free_bytes) -> None:
        d = config.daemon
        self.config = config
        self.ledger = ledger
        self.notifier = notifier or SystemdNotifier(None)
        self.inbox = Path(d.inbox)
        self.outbox = Path(d.outbox)
        self.work = Path(d.work)
        self.styles = Path(d.styles)
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.inbox_watch = Inbox(d, self.events, watch=watch)
        self.handler = self.inbox_watch.handler
        self.tracker = self.inbox_watch.tracker
        self.backend: Backend = backend if backend is not None else ProcessBackend(config)
        if plans is None:
            plans = self.backend.plans() or plan_workers(config)  # a cluster knows its actors
        self.slots = WorkerSlots(plans, self.backend, self.events, ledger, d)
        self._clock = clock
        self._mono = monotonic
        self._stopping = False
        self._told_stop = False
        self.exit_code = 0
        self.systemd = SystemdStatus(self.notifier)
        self._woken: list[Any] = []  # what ended the last idle wait
        self._paused_until = float("-inf")  # the ledger could not be written: wait
        self._pause = 0.0
        self._stranded: int | None = None  # job left 'running' by a ledger error
        # Overnight habits: active_hours and `nstd pause` (schedule.py), on_event (hooks.py).
        self.gate = WorkGate(d.active_hours, d.state)
        self.hooks = hooks if hooks is not None else Hooks.from_config(config)
        self.space = SpaceGuard(config, self.hooks, free_space)
        self.failures = Failures(config, ledger, self.inbox_watch, self.hooks, clock=clock,
                                 monotonic=monotonic)
        self.queueing = Queueing(config, ledger, self.inbox_watch, self.failures)
        self.claims = Claims(config, ledger, self.inbox_watch, self.failures, clock)
        self.endings = Endings(config, ledger, self.failures, self.claims, self.space,
                               self.hooks, clock)
        self._work_since: float | None = None  # first claim since the queue was empty

    # ----------------------------------------------------------------- lifecycle

    @property
    def stop_requested(self) -> bool:
        return self._stopping

    def request_stop(self) -> None:
        """Ask the supervisor to stop at the next safe point. Safe in a signal handler: it
        sets a flag and wakes the idle wait (SimpleQueue.put is reentrant)."""
        self._stopping = True
        self.events.put(_WAKE)

    def workers(self) -> tuple[WorkerView, ...]:
        """Each worker as of the end of the last step: safe to call from any thread (the
        status page's)."""
        return self.slots.snapshot()

    def start(self, now: float, monotonic: float | None = None) -> None:
        """Recover interrupted jobs, clean up after a crash, start the workers and the watch,
        scan, READY=1 (without waiting for the workers to load the network).

        The caller holds the `DaemonLock` (so `recover` cannot steal a live daemon's jobs).
        """
        mono = now if monotonic is None else monotonic
        recover(self.config, self.ledger, max(now, self._clock()))
        self.space.clear_status()
        for slot in self.slots:
            self.slots.spawn(slot, mono)
        self._drain(now, mono)  # an in-process worker is ready at once
        self.inbox_watch.start(mono)
        counts = self.ledger.counts()
        # Files of jobs already queued are seen by the scan too: not counted again.
        settling = new_arrivals(self.tracker.paths(), self.inbox, self.ledger)
        log.info("ready: watching %s (%s), %d queued, %s settling, %s; results in %s",
                 self.inbox, "polling" if self.config.daemon.poll else "inotify",
                 counts["queued"], plural(len(settling), "file"),
                 plural(len(self.slots), "worker"), self.outbox)
        self.slots.publish()
        self.systemd.ready(self._status_line(), mono)

    def run(self) -> int:
        """The service loop: `start`, `step` until a stop is requested and every worker has
        parked its job, `stop`. Returns the exit code (2: a worker cannot load the network).

        Sleeps on the event queue between steps (inbox events and worker messages wake it),
        waking for the next settle time, rescan, retry, worker check or watchdog ping.
        """
        self.start(self._clock(), self._mono())
        try:
            while not (self._stopping and not self.slots.busy()):
                try:
                    worked = self.step(self._clock(), self._mono())
                except Exception as exc:  # noqa: BLE001 - a bug must not end the service
                    log.error("unexpected error in the supervisor loop: %s: %s",
                              type(exc).__name__, exc)
                    log.debug("traceback", exc_info=True)
                    self._pause_for(self._mono())
                    worked = False
                self.ping(self._mono())
                if not worked and not (self._stopping and not self.slots.busy()):
                    self.wait(self.idle_timeout(self._clock(), self._mono()))
        finally:
            self.stop()
        return self.exit_code

    def stop(self) -> None:
        """Stop the workers (a stop message, then SIGKILL after a grace period) and the
        watch, and tell systemd; the ledger and lock belong to the caller."""
        self._stopping = True
        self.notifier.stopping("stopping")
        self._tell_stop()
        self.slots.stop_all(STOP_GRACE_SECONDS, self._mono)
        self.backend.close()
        self.inbox_watch.stop_observer()
        self.space.clear_status()
        self.hooks.close()
        log.info("stopped")

    def _tell_stop(self) -> None:
        if not self._told_stop:
            self._told_stop = True
            self.slots.tell({"type": "stop"})

    # ----------------------------------------------------------------- one step

    def step(self, now: float, monotonic: float | None = None) -> bool:
        """One round: take in events and worker messages, check the workers, hand queued
        jobs to idle workers. True when a job was claimed (call again at once).

        ``now``: epoch seconds (ledger); ``monotonic``: the tracker's clock (default ``now``).
        """
        mono = now if monotonic is None else monotonic
        try:
            worked = self._round(now, mono)
        except sqlite3.Error as exc:
            # The ledger cannot be written (disk full, I/O error): nothing about the job can
            # be recorded, so nothing is decided. Pause, then put the job back and go on.
            log.error("cannot write the job ledger %s (%s); pausing %s", self.ledger.path,
                      exc, format_duration(self._pause_for(mono)))
            self.slots.publish()
            return False
        self.slots.publish()
        if worked is None:
            return False
        self._pause = 0.0
        self._set_status()
        return worked

    def _round(self, now: float, mono: float) -> bool | None:
        """`step` without its ledger-error handling; None: paused or held (no job handed
        out, and the ledger pause, if any, goes on)."""
        self.intake(now, mono)
        if self._stopping:
            self._tell_stop()
        self._check_workers(now, mono)
        if self._stopping or mono < self._paused_until:
            return None
        self.slots.park_short(self.space, mono)
        if self._hold(now) or self.space.blocked(mono):  # active_hours, `nstd pause`, space
            self._set_status()
            return None
        worked = self._dispatch(now, mono)
        if not worked:
            self._queue_empty(now)
        return worked

    def _pause_for(self, mono: float) -> float:
        """Pause the loop (1 s, doubling up to MAX_PAUSE_SECONDS); returns the pause."""
        self._pause = min(MAX_PAUSE_SECONDS, max(1.0, 2 * self._pause))
        self._paused_until = mono + self._pause
        return self._pause

    def schedule_state(self, now: float | None = None) -> dict[str, Any]:
        """``{"paused": bool, "reason": "schedule"|"manual"|None, "until": "HH:MM"|None}``
        (see `nstd.daemon.schedule`); ``now``: epoch seconds, default the clock."""
        return self.gate.state(self._clock() if now is None else now)

    def space_state(self) -> dict[str, Any]:
        """``{"waiting": False}``, or what the daemon waits for: ``path``, ``need_mb``,
        ``free_mb`` and ``text`` ("waiting for N MB free on <path>"). Any thread."""
        return self.space.state()

    def _hold(self, now: float) -> bool:
        """True while the gate is closed; asks each busy worker, once per job, to park its
        job between frames."""
        if not self.gate.closed(now):
            return False
        for slot in self.slots:
            self.slots.park(slot, "pausing")
        return True

    def _queue_empty(self, now: float) -> None:
        """``queue-empty`` once the last job of a busy spell ended and nothing is left."""
        if self._work_since is None or self.slots.busy():
            return
        counts = self.ledger.counts()
        if counts["queued"] or counts["running"]:
            return
        self.hooks.emit(Event("queue-empty", seconds=now - self._work_since))
        self._work_since = None

    def idle_timeout(self, now: float, monotonic: float) -> float:
        """Seconds the idle loop may sleep before something is due."""
        waits = [MAX_WAIT, *self.inbox_watch.waits(monotonic)]
        for wait in (self.systemd.next_ping(monotonic), self.space.wait_seconds(monotonic),
                     self.gate.wait(now)):
            if wait is not None:
                waits.append(wait)
        if self._paused_until > monotonic:
            waits.append(self._paused_until - monotonic)
        waits += self.slots.waits(monotonic, self._stopping)
        backing_off = [j.not_before for j in self.ledger.active()
                       if j.state == "queued" and j.not_before > now]
        if backing_off:
            waits.append(min(backing_off) - now)
        return max(MIN_WAIT, min(waits))

    def wait(self, timeout: float) -> None:
        """Sleep until an inbox event or a worker message arrives, or ``timeout`` passes."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        self._woken.append(item)  # handled by the next step (where ledger errors are caught)

    def _take(self, item: Any, now: float, mono: float) -> None:
        if isinstance(item, Message):
            self._on_message(item, now, mono)
        elif item is not _WAKE:
            self.inbox_watch.event(item, mono)

    def _drain(self, now: float, mono: float) -> None:
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return
            self._take(item, now, mono)

    def intake(self, now: float, monotonic: float) -> None:
        """Take in watch events and worker messages, look at the inbox, and queue the files
        that settled; hands out no job (`step` does)."""
        mono = monotonic
        while self._woken:
            self._take(self._woken.pop(0), now, mono)
        self._drain(now, mono)
        self.inbox_watch.check(mono)
        self.failures.recheck(now, mono)
        if mono >= self.inbox_watch.next_rescan:
            self.inbox_watch.rescan(mono)
        self.queueing.queue_settled(now, mono)

    # ----------------------------------------------------------------- workers

    def _check_workers(self, now: float, mono: float) -> None:
        for slot, rc in self.slots.check(mono, self._stopping):
            self._worker_exited(slot, rc, now, mono)

    def _worker_exited(self, slot: Slot, rc: int, now: float, mono: float) -> None:
        failpoint("daemon.worker_died")
        how = slot.killed_for or describe_exit(rc)
        job = self.slots.exited(slot, mono, final=self._stopping or bool(self.exit_code))
        if self._stopping or self.exit_code:  # stopping, or fatal: no network to load
            if self._stopping and job is not None:  # killed mid-job during the stop: back
                self.ledger.release(job.id, now)
        elif job is None:
            log.warning("%s died (%s); restarting it", slot.name, how)
        else:
            log.error("%s died (%s) on %s; restarting it", slot.name, how, job.source)
            self.endings.worker_died(job, how, now)

    def _on_message(self, message: Message, now: float, mono: float) -> None:
        taken = self.slots.take(message, now, mono)
        if taken is None:
            return
        slot, data = taken
        if data.get("event") != "fatal":
            self._job_ended(slot, data, now, mono)
            return
        log.error("%s cannot run jobs: %s; stopping (fix it, then start nstd again)",
                  slot.name, data.get("reason"))
        # A download that failed for want of network is retried by a restart (exit 1);
        # anything else (a missing or broken file) would fail the same way again.
        self.exit_code = EXIT_TRANSIENT if data.get("transient") else EXIT_CONFIG
        self.request_stop()

    def _job_ended(self, slot: Slot, data: dict[str, Any], now: float, mono: float) -> None:
        """The worker reported its job published or failed: the slot is free again."""
        job, spec, need = slot.job, slot.spec, slot.need
        assert job is not None
        slot.free(mono)
        try:
            self.endings.reported(job, spec, data, now, mono, need)
        except sqlite3.Error:
            if self._stranded is None:
                self._stranded = job.id
            raise

    # ----------------------------------------------------------------- a job's life

    def _dispatch(self, now: float, mono: float) -> bool:
        worked = False
        for slot in self.slots:
            if slot.state != "idle":
                continue
            if self._stranded is not None:
                self.ledger.release(self._stranded, now)
                log.info("the job ledger can be written again; job %d is back in the queue",
                         self._stranded)
                self._stranded = None
            job = self.ledger.claim(now, self.config.daemon.lease_seconds)
            if job is None:
                break
            need = job_need(job, self.config, self.inbox)
            if not self.space.admit(need, stored_frames(job), mono, job.source):
                self.ledger.release(job.id, now)  # no attempt counted: it waits for room
                break
            worked = True
            if self._work_since is None:
                self._work_since = now
            failpoint("daemon.claimed")
            self._hand_out(slot, job, need, now, mono)
        return worked

    def _hand_out(self, slot: Slot, job: Job, need: Need, now: float, mono: float) -> None:
        """Prepare the claimed ``job`` and send it to ``slot``'s worker."""
        try:
            spec = self.claims.prepare(job, mono)
        except sqlite3.Error:
            if self._stranded is None:
                self._stranded = job.id
            raise
        if spec is None:
            return
        assert slot.handle is not None  # an idle slot has its worker
        slot.busy_with(job, spec, mono)
        slot.need = need
        self.slots.publish()  # the page sees the job from its start
        slot.handle.send({"type": "job", "spec": spec.to_dict()})
        self._drain(now, mono)  # an in-process worker has already finished

    # ----------------------------------------------------------------- systemd

    def ping(self, mono: float) -> None:
        """WATCHDOG=1 when due, while the loop runs and the busy workers report: a hung
        worker is killed and restarted instead, and a hung loop gets the service restarted
        by systemd."""
        stall = self.config.daemon.stall_seconds
        self.systemd.ping(mono, lambda: healthy(self.slots, mono, stall))

    def _status_line(self) -> str:
        paused = describe_pause(self.gate.state(self._clock()))
        waiting = self.space.waiting.describe() if self.space.waiting else None
        busy = [slot for slot in self.slots if slot.state == "busy" and slot.job]
        return status_line(self.ledger.counts(), busy, paused, waiting)

    def _set_status(self) -> None:
        self.systemd.update(self._status_line)


Daemon = Supervisor  # the name before the supervisor/worker split

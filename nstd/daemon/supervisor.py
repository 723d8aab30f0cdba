"""The daemon's lifecycle: notice files, queue them, run one job at a time, never die of one.

    daemon = Daemon(config, ledger, engines, notifier)   # built once by `nstd run`
    daemon.run()          # start(), then step() until stop is requested, then stop()

`step(now)` does one unit of work, as huey's consumer does, so tests drive it with a fake
clock: drain watch events into the `StabilityTracker`, rescan the inbox when due, queue the
files that settled, then claim and process at most one job. Signal handlers only call
`request_stop()` (a flag, plus a wake-up for the idle wait); the CLI installs them.

Exactly once, across kill -9 at any point:
- the output path is chosen and recorded in the ledger before anything is published; a job
  that finds its recorded output already there (published, then killed before "done") checks
  it and finishes without computing again; other jobs never pick a recorded name;
- the source is moved only after the job is marked done, and a source found in the inbox whose
  job is done (killed between the two) is moved then, never processed again; likewise a
  source whose job is marked failed and that has not been touched since (its ctime is older
  than the failure: `nstd retry` and a manual move back both rename it, which sets the ctime)
  is moved to failed/ then, not processed again;
- a video's stored frames live in `daemon.work/<job id>`, so a restarted job resumes;
- temp files of ours left in the outbox, done/ and failed/ are removed at start.

Failures: `TransientError` (and `OutputError` or an `OSError`: the outbox may be full or
read-only for a while) is retried with backoff up to `daemon.max_attempts`;
`OutOfMemoryError` (or a raw ``torch.cuda.OutOfMemoryError``) is retried with half the memory
budget (`model.max_memory_gb`, or `model.auto_memory_share` when it is auto), so the engine uses
smaller tiles; the output keeps its size (the user's choice) and a video its stored frames;
`Interrupted` after a stop request puts the job back without counting the attempt; every
other error fails the job at once: its source goes to failed/ with the reason. When the
ledger itself cannot be written (``sqlite3.Error``: the disk is full), nothing is decided
about the job: the loop pauses (1 s, doubling to a minute), then puts the job back and goes on.

Left alone (logged once, never moved): symlinks, FIFOs and devices, names that are not media,
folders nested deeper than `nstd.daemon.watch.MAX_DEPTH`, files still changing, and zero-byte files
(usually a copy that has not started writing; taken once they have content).

The inbox folder itself may vanish (deleted, or a mount that went away): the daemon waits for
it without re-creating it, then re-arms the watch and rescans.

Outside `daemon.active_hours` or after `nstd pause` (`nstd.daemon.schedule.WorkGate`), files
are still queued but nothing is claimed, and each busy worker is sent "park" once: its job
comes back as "stopped" (released, first in line). Events go to `nstd.daemon.hooks`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nstd.config import Config, to_mapping
from nstd.daemon import outcome
from nstd.daemon.arrivals import new_arrivals
from nstd.daemon.hooks import Event, Hooks
from nstd.daemon.intake import (
    job_config,
    relative_source,
    resolve_style,
    style_label,
    take,
    user_name,
)
from nstd.daemon.jobspec import INPUT_FOLDER, STORE_FOLDER, JobSpec, check_job, kind_of, link_source
from nstd.daemon.ledger import Job, Ledger, content_key
from nstd.daemon.maskfiles import MASKS_FOLDER, check_masks, link_masks, mask_path
from nstd.daemon.notify import SystemdNotifier, watchdog_interval
from nstd.daemon.pool import ProcessBackend, WorkerPlan, describe_exit, plan_workers
from nstd.daemon.schedule import WorkGate
from nstd.daemon.schedule import describe as describe_pause
from nstd.daemon.watch import (
    InboxEventHandler,
    StabilityTracker,
    log_once,
    regular_signature,
    scan_inbox,
    start_observer,
)
from nstd.errors import ConfigError, InputError
from nstd.faults import failpoint
from nstd.progress import format_duration
from nstd.text import plural

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 10.0  # one progress line per job this often
HEARTBEAT_SECONDS = 1.0  # lease renewal and progress rows while a job runs, at most this often
STOP_GRACE_SECONDS = 60.0  # workers get this long to park their job after a stop
RESTART_BACKOFF_MAX = 30.0  # a worker that dies before "ready" again and again: restart delay
START_SECONDS = 300.0  # a worker loading torch and the network may take this long to be ready
# A file that failed as unreadable/truncated stays in the inbox this many settle times; moved
# to failed/ only if unchanged by then (a copy that paused is not a broken file).
INPUT_HOLD_SETTLES = 3
# WATCHDOG=1 every this fraction of watchdog_interval() (itself half of WatchdogSec): a loop
# woken late on a loaded machine still pings well within the interval.
PING_FRACTION = 0.5
EXIT_CONFIG = 2  # a worker cannot load the network: systemd must not restart us in a loop
EXIT_TRANSIENT = 1  # a worker cannot fetch the weights right now: systemd restarts us
STAGES = {"probe": "checking", "plan": "planning", "frame": "frame", "iteration": "iteration",
          "verify": "verifying", "encode": "encoding"}
OOM_SHRINK = 0.5  # next attempt's memory budget after running out of memory (smaller tiles)
MIN_MEMORY_GB, MIN_MEMORY_SHARE = 0.01, 0.01  # config minimums: below them the job fails
MIN_WAIT = 0.05
MAX_WAIT = 300.0
KNOWN_LIMIT = 100_000
# The inbox folder is checked (still the same folder? watch alive?) at most this often while
# present (at each step: the idle loop wakes at least every rescan), and polled this often
# while it is missing. Its deletion is an event that wakes the loop at once.
INBOX_CHECK_SECONDS = 10.0
INBOX_MISSING_POLL_SECONDS = 1.0
# When the ledger cannot be written (disk full...), the loop pauses, doubling up to this.
MAX_PAUSE_SECONDS = 60.0

_WAKE = Path("\0wake")  # put on the event queue to end an idle wait (never a real path)


# --------------------------------------------------------------------------- the supervisor


@dataclass
class _Slot:
    """One worker place: its process (restarted when it dies) and the job it runs."""

    index: int
    plan: WorkerPlan
    handle: Any = None
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
    parked: int | None = None  # the job it was asked to park (the daemon paused)
    eof: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.index + 1}"


@dataclass(frozen=True)
class _Message:
    """A worker's event (None: its pipe closed), tagged with the process it came from."""

    index: int
    generation: int
    data: dict[str, Any] | None


class Supervisor:
    """Watches the inbox, queues files, hands jobs to worker processes and records what
    they report. See the module docstring.

    ``clock`` gives ledger time (epoch seconds), ``monotonic`` the stability tracker's and the
    throttles' time; tests inject both. ``backend`` starts workers (`spawn(index, plan,
    deliver)`): the default is real processes (`nstd.daemon.pool.ProcessBackend`); unit tests
    pass `nstd.daemon.worker.InlineBackend`. ``watch=False`` starts no watchdog observer (tests
    dispatch events to ``handler`` by hand).
    """

    def __init__(self, config: Config, ledger: Ledger, notifier: SystemdNotifier | None = None,
                 *, backend: Any = None, plans: list[WorkerPlan] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, watch: bool = True,
                 hooks: Hooks | None = None) -> None:
        d = config.daemon
        self.config = config
        self.ledger = ledger
        self.notifier = notifier or SystemdNotifier(None)
        self.inbox = Path(d.inbox)
        self.outbox = Path(d.outbox)
        self.work = Path(d.work)
        self.styles = Path(d.styles)
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.handler = InboxEventHandler(self.inbox, self.events)
        # On inotify, a file modified and not closed since is still being written (watch.py).
        self.tracker = StabilityTracker(d.settle_seconds, writes=self.handler.writes)
        self.backend = backend if backend is not None else ProcessBackend(config)
        if plans is None:
            own_plans = getattr(self.backend, "plans", None)  # a cluster knows its actors
            plans = own_plans() if own_plans is not None else plan_workers(config)
        self._plans = plans
        self._slots = [_Slot(i, plan) for i, plan in enumerate(self._plans)]
        self._clock = clock
        self._mono = monotonic
        self._watch = watch
        self._observer: Any = None
        self._stopping = False
        self._told_stop = False
        self.exit_code = 0
        self._next_rescan = 0.0
        self._watchdog_every = watchdog_interval()
        self._last_ping = float("-inf")
        self._last_status = ""
        # Files whose job is queued, running or done, by (size, mtime_ns): a rescan does not
        # hash them again. Dropped when the file leaves the inbox through us.
        self._known: dict[Path, tuple[int, int]] = {}
        # Failed as unreadable/truncated: looked at again later (a copy that paused).
        self._recheck: list[tuple[float, Path, int]] = []
        self._woken: list[Any] = []  # what ended the last idle wait
        self._inbox_id: tuple[int, int] | None = None  # (st_dev, st_ino) being watched
        self._next_inbox_check = 0.0
        self._paused_until = float("-inf")  # the ledger could not be written: wait
        self._pause = 0.0
        self._stranded: int | None = None  # job left 'running' by a ledger error
        self._ledger_warned = False
        # Overnight habits: active_hours and `nstd pause` (schedule.py), on_event (hooks.py).
        self.gate = WorkGate(d.active_hours, d.state)
        self.hooks = hooks if hooks is not None else Hooks.from_config(config)
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

    def start(self, now: float, monotonic: float | None = None) -> None:
        """Recover interrupted jobs, clean up after a crash, start the workers and the watch,
        scan, READY=1 (without waiting for the workers to load the network).

        The caller holds the `DaemonLock` (so `recover` cannot steal a live daemon's jobs).
        """
        mono = now if monotonic is None else monotonic
        for job in self.ledger.active():  # links of interrupted jobs: taken again at claim
            if job.state == "running":
                shutil.rmtree(self.work / str(job.id) / INPUT_FOLDER, ignore_errors=True)
        now = max(now, self._clock())
        self.ledger.recover(now, self.config.daemon.max_attempts)
        for job in self.ledger.interrupted_failures:
            log.error("%s failed: %s", job.source, job.error)
        if not any(self.ledger.counts().values()):
            rebuilt = outcome.rebuild_ledger(self.ledger, self.config, now)
            if any(rebuilt):
                log.warning("the job ledger was empty: rebuilt %d done and %s "
                            "from %s and %s", rebuilt[0], plural(rebuilt[1], "failed job"),
                            self.config.daemon.done, self.config.daemon.failed)
        for key in ("outbox", "done", "failed"):
            removed = outcome.clean_temp_files(Path(getattr(self.config.daemon, key)))
            if removed:
                log.info("removed %s from %s", plural(removed, "unfinished temporary file"),
                         getattr(self.config.daemon, key))
        self._clean_work_dirs()
        for slot in self._slots:
            self._spawn(slot, mono)
        self._drain(now, mono)  # an in-process worker is ready at once
        self._inbox_id = _folder_identity(self.inbox)
        self._start_observer()
        self._next_inbox_check = mono + INBOX_CHECK_SECONDS
        for path in scan_inbox(self.inbox):
            self._notice(path, mono, scan=True)
        self._next_rescan = mono + self.config.daemon.rescan_seconds
        counts = self.ledger.counts()
        # Files of jobs already queued are seen by the scan too: not counted again.
        settling = new_arrivals(self.tracker.paths(), self.inbox, self.ledger)
        log.info("ready: watching %s (%s), %d queued, %s settling, %s; results in %s",
                 self.inbox, "polling" if self.config.daemon.poll else "inotify",
                 counts["queued"], plural(len(settling), "file"),
                 plural(len(self._slots), "worker"), self.outbox)
        self.notifier.ready(self._status_line())
        self._last_ping = mono

    def run(self) -> int:
        """The service loop: `start`, `step` until a stop is requested and every worker has
        parked its job, `stop`. Returns the exit code (2: a worker cannot load the network).

        Sleeps on the event queue between steps (inbox events and worker messages wake it),
        waking for the next settle time, rescan, retry, worker check or watchdog ping.
        """
        self.start(self._clock(), self._mono())
        try:
            while not (self._stopping and not self._busy()):
                try:
                    worked = self.step(self._clock(), self._mono())
                except Exception as exc:  # noqa: BLE001 - a bug must not end the service
                    log.error("unexpected error in the supervisor loop: %s: %s",
                              type(exc).__name__, exc)
                    log.debug("traceback", exc_info=True)
                    self._pause_for(self._mono())
                    worked = False
                self._ping(self._mono())
                if not worked and not (self._stopping and not self._busy()):
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
        deadline = self._mono() + STOP_GRACE_SECONDS
        for slot in self._slots:
            handle = slot.handle
            if handle is None:
                continue
            wait = getattr(handle, "wait", None)
            if wait is not None and wait(max(0.0, deadline - self._mono())) is None:
                log.warning("%s (pid %s) did not stop; killing it", slot.name, handle.pid)
                handle.kill()
                wait(5.0)
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        self._stop_observer()
        self.hooks.close()
        log.info("stopped")

    def _busy(self) -> bool:
        return any(slot.state == "busy" for slot in self._slots)

    def _tell_stop(self) -> None:
        if self._told_stop:
            return
        self._told_stop = True
        for slot in self._slots:
            if slot.handle is not None and slot.handle.poll() is None:
                slot.handle.send({"type": "stop"})

    def _start_observer(self) -> None:
        if self._watch and self._inbox_id is not None:
            self._observer = start_observer(self.inbox, self.handler,
                                            poll=self.config.daemon.poll)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            logging.getLogger("watchdog.observers.inotify").addFilter(_quiet_inotify_stop)
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # ----------------------------------------------------------------- one step

    def step(self, now: float, monotonic: float | None = None) -> bool:
        """One round: take in events and worker messages, check the workers, hand queued
        jobs to idle workers. True when a job was claimed (call again at once).

        ``now``: epoch seconds (ledger); ``monotonic``: the tracker's clock (default ``now``).
        """
        mono = now if monotonic is None else monotonic
        try:
            self._intake(now, mono)
            if self._stopping:
                self._tell_stop()
            self._check_workers(now, mono)
            if self._stopping or mono < self._paused_until:
                return False
            if self._hold(now):  # outside daemon.active_hours, or `nstd pause`
                self._set_status()
                return False
            worked = self._dispatch(now, mono)
            if not worked:
                self._queue_empty(now)
        except sqlite3.Error as exc:
            # The ledger cannot be written (disk full, I/O error): nothing about the job can
            # be recorded, so nothing is decided. Pause, then put the job back and go on.
            log.error("cannot write the job ledger %s (%s); pausing %s", self.ledger.path,
                      exc, format_duration(self._pause_for(mono)))
            return False
        self._pause = 0.0
        self._set_status()
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

    def _hold(self, now: float) -> bool:
        """True while the gate is closed; asks each busy worker, once per job, to park its
        job between frames (it comes back as "stopped": queued again, no attempt counted,
        first in line; a video keeps its stored frames, an image starts over)."""
        if not self.gate.closed(now):
            return False
        for slot in self._slots:
            if slot.state == "busy" and slot.job is not None and slot.parked != slot.job.id \
                    and slot.handle is not None:
                slot.parked = slot.job.id
                log.info("%s: pausing %s", slot.name, slot.job.source)
                slot.handle.send({"type": "park"})
        return True

    def _announce_failed(self, job: Job, when: float) -> None:
        self.hooks.emit(Event("failed", job.source, "", job.error or "failed",
                              when - (job.started or when)))

    def _queue_empty(self, now: float) -> None:
        """``queue-empty`` once the last job of a busy spell ended and nothing is left."""
        if self._work_since is None or self._busy():
            return
        counts = self.ledger.counts()
        if counts["queued"] or counts["running"]:
            return
        self.hooks.emit(Event("queue-empty", seconds=now - self._work_since))
        self._work_since = None

    def idle_timeout(self, now: float, monotonic: float) -> float:
        """Seconds the idle loop may sleep before something is due."""
        waits = [self._next_rescan - monotonic, MAX_WAIT]
        if self._inbox_id is None:  # poll for a missing inbox; its deletion is an event
            waits.append(self._next_inbox_check - monotonic)
        if self._paused_until > monotonic:
            waits.append(self._paused_until - monotonic)
        due = self.tracker.next_due(monotonic)
        if due is not None:
            waits.append(due)
        if self._recheck:
            waits.append(min(r[0] for r in self._recheck) - monotonic)
        if self._watchdog_every is not None:
            waits.append(self._last_ping + self._watchdog_every * PING_FRACTION - monotonic)
        for slot in self._slots:
            if slot.state in ("busy", "starting"):
                waits.append(HEARTBEAT_SECONDS)  # leases, stall checks
            elif slot.state == "down" and not self._stopping:
                waits.append(slot.restart_at - monotonic)
        backing_off = [j.not_before for j in self.ledger.active()
                       if j.state == "queued" and j.not_before > now]
        if backing_off:
            waits.append(min(backing_off) - now)
        gate = self.gate.wait(now)
        if gate is not None:
            waits.append(gate)
        return max(MIN_WAIT, min(waits))

    def wait(self, timeout: float) -> None:
        """Sleep until an inbox event or a worker message arrives, or ``timeout`` passes."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        self._woken.append(item)  # handled by the next step (where ledger errors are caught)

    def _take(self, item: Any, now: float, mono: float) -> None:
        if isinstance(item, _Message):
            self._on_message(item, now, mono)
        elif item is not _WAKE:
            self._event(item, mono)

    # ----------------------------------------------------------------- workers

    def _spawn(self, slot: _Slot, mono: float) -> None:
        slot.generation += 1
        generation = slot.generation
        index = slot.index

        def deliver(data: dict[str, Any] | None) -> None:
            self.events.put(_Message(index, generation, data))

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

    def _check_workers(self, now: float, mono: float) -> None:
        stall = self.config.daemon.stall_seconds
        for slot in self._slots:
            if slot.state == "down":
                if not self._stopping and mono >= slot.restart_at:
                    self._spawn(slot, mono)
                continue
            if slot.state == "exited" or slot.handle is None:
                continue
            rc = slot.handle.poll()
            if rc is None and slot.eof:
                wait = getattr(slot.handle, "wait", None)
                rc = wait(1.0) if wait is not None else None
            if rc is not None:
                self._worker_exited(slot, rc, now, mono)
                continue
            silent = mono - slot.heard
            limit = stall if slot.state == "busy" else max(stall, START_SECONDS)
            if slot.state in ("busy", "starting") and silent > limit and \
                    slot.killed_for is None:
                what = f"on {slot.job.source}" if slot.job else "while starting"
                log.error("%s (pid %s) has not reported for %.0f s %s "
                          "(limit %g s: daemon.stall_seconds); killing it", slot.name,
                          slot.handle.pid, silent, what, limit)
                slot.killed_for = f"no report for {silent:.0f} s: killed as stalled"
                slot.handle.kill()

    def _worker_exited(self, slot: _Slot, rc: int, now: float, mono: float) -> None:
        failpoint("daemon.worker_died")
        how = slot.killed_for or describe_exit(rc)
        job, ready = slot.job, slot.state != "starting"
        slot.handle, slot.job, slot.spec = None, None, None
        if self._stopping:
            slot.state = "exited"
            if job is not None:  # killed mid-job during the stop: crash-safe, back it goes
                self.ledger.release(job.id, now)
            return
        if self.exit_code:  # fatal: it could not load the network
            slot.state = "exited"
            return
        slot.state = "down"
        slot.quick_deaths = 0 if ready else slot.quick_deaths + 1
        delay = min(RESTART_BACKOFF_MAX, 0.5 * 2 ** slot.quick_deaths) if slot.quick_deaths \
            else 0.0
        slot.restart_at = mono + delay
        if job is None:
            log.warning("%s died (%s); restarting it", slot.name, how)
            return
        log.error("%s died (%s) on %s; restarting it", slot.name, how, job.source)
        current = self.ledger.get(job.id) or job
        reason = f"the worker process died ({how})"
        if current.attempts >= self.config.daemon.max_attempts:
            reason += f" on this file {plural(current.attempts, 'time')}"
        self._fail(job, reason, now, permanent=False)

    def _on_message(self, message: _Message, now: float, mono: float) -> None:
        slot = self._slots[message.index]
        if message.generation != slot.generation:
            return  # from a process already replaced
        data = message.data
        if data is None:
            slot.eof = True
            return
        slot.heard = mono
        event = data.get("event")
        if event == "ready":
            slot.state, slot.since, slot.quick_deaths = "idle", mono, 0
            slot.device = str(data["device"]) if data.get("device") else None
            log.info("%s ready (device %s)", slot.name, slot.device)
            return
        if event == "fatal":
            log.error("%s cannot run jobs: %s; stopping (fix it, then start nstd again)",
                      slot.name, data.get("reason"))
            # A download that failed for want of network is retried by a restart (exit 1);
            # anything else (a missing or broken file) would fail the same way again.
            self.exit_code = EXIT_TRANSIENT if data.get("transient") else EXIT_CONFIG
            self.request_stop()
            return
        job = slot.job
        if job is None or data.get("job") != job.id:
            return
        if event in ("progress", "heartbeat"):
            self._renew(slot, now, mono)
            if event == "progress":
                self._progress(slot, data, mono)
            return
        spec = slot.spec
        slot.state, slot.since, slot.job, slot.spec = "idle", mono, None, None
        try:
            if event == "published":
                self._complete(job, Path(data.get("output") or ""), str(data.get("summary")))
            elif event == "failed":
                reason = str(data.get("reason"))
                if spec is not None:  # the user's name for the file, not the linked copy's
                    reason = reason.replace(spec.source, user_name(self.inbox, job.source))
                self._failed(job, str(data.get("kind")), reason, now, mono)
        except sqlite3.Error:
            if self._stranded is None:
                self._stranded = job.id
            raise

    def _renew(self, slot: _Slot, now: float, mono: float) -> None:
        if slot.job is None or mono - slot.last_renew < HEARTBEAT_SECONDS:
            return
        slot.last_renew = mono
        # The lease only informs `nstd status` (the DaemonLock keeps other daemons out): a
        # ledger that cannot be written right now must not break the running job.
        self._ledger_write(self.ledger.renew, slot.job.id, now,
                           self.config.daemon.lease_seconds)

    def _progress(self, slot: _Slot, data: dict[str, Any], mono: float) -> None:
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
            self._ledger_write(self.ledger.progress, slot.job.id, slot.done, slot.total,
                               slot.eta)
        if mono - slot.last_log >= PROGRESS_LOG_SECONDS:
            slot.last_log = mono
            log.info("%s: %s %d/%d, ETA %s", slot.job.source, STAGES.get(slot.stage,
                     slot.stage), slot.done, slot.total, format_duration(slot.eta))

    # ----------------------------------------------------------------- handing out jobs

    def _dispatch(self, now: float, mono: float) -> bool:
        worked = False
        for slot in self._slots:
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
            worked = True
            if self._work_since is None:
                self._work_since = now
            failpoint("daemon.claimed")
            try:
                spec = self._prepare(job, mono)
            except sqlite3.Error:
                if self._stranded is None:
                    self._stranded = job.id
                raise
            if spec is None:
                continue
            slot.state, slot.job, slot.spec = "busy", job, spec
            slot.since = slot.heard = mono
            slot.stage, slot.done, slot.total, slot.eta = "starting", 0, 0, None
            slot.losses = None
            slot.last_write = slot.last_log = slot.last_renew = float("-inf")
            slot.handle.send({"type": "job", "spec": spec.to_dict()})
            self._drain(now, mono)  # an in-process worker has already finished
        return worked

    def _drain(self, now: float, mono: float) -> None:
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return
            self._take(item, now, mono)

    def _prepare(self, job: Job, mono: float) -> JobSpec | None:
        """Everything a worker needs for ``job``, or None when the job ended here (dropped,
        failed, finished)."""
        path = self.inbox / job.source
        why_not = outcome.source_changed(path, job.content_key)
        if why_not is not None:
            self._drop(job, path, why_not, mono)
            return None
        kind = kind_of(path)
        try:
            config = job_config(self.config, job.settings, self.inbox)
            problems = check_job(config, kind)
            if problems:
                raise ConfigError(problems, source="settings")
            style_paths = [resolve_style(self.styles, name)
                           for name in [s for s, _ in job.masks] or [job.style]]
            if kind is None:
                raise InputError(f"{path.name}: not an image or a video nstd can read")
        except ConfigError as exc:
            self._fail(job, exc.reason("settings"),
                       self._clock(), permanent=True)
            return None
        except InputError as exc:
            self._fail(job, str(exc), self._clock(), permanent=True)
            return None
        work = self.work / str(job.id)
        try:
            masks = self._take_masks(job, work)
        except InputError as exc:  # a mask went or changed since intake: the user must act
            self._fail(job, str(exc), self._clock(), permanent=True)
            return None
        except OSError as exc:
            self._fail(job, f"cannot copy a style mask: {exc.strerror or exc}", self._clock(),
                       permanent=False)
            return None
        try:
            failpoint("daemon.link")
            linked = link_source(path, work / INPUT_FOLDER, job.content_key)
            output = self._output_for(job, kind, "+".join(map(style_label, style_paths)))
            output.parent.mkdir(parents=True, exist_ok=True)
        except InputError:
            self._drop(job, path, "replaced", mono)
            return None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            self._fail(job, f"{exc.strerror or exc}{where}", self._clock(), permanent=False)
            return None
        existing = os.path.lexists(output)
        attempt = f"attempt {job.attempts}/{self.config.daemon.max_attempts}"
        if existing:
            log.info("%s: its result %s was already published; finishing", job.source, output)
        else:
            log.info("started %s (job %d, %s, style %s)", job.source, job.id, attempt,
                     job.style)
        return JobSpec(job_id=job.id, name=job.source, source=str(linked), kind=kind,
                       styles=tuple(map(str, style_paths)), config=to_mapping(config),
                       masks=tuple(map(str, masks)),
                       work_dir=str(work / STORE_FOLDER), output=str(output),
                       verify_existing=existing)

    def _take_masks(self, job: Job, work: Path) -> tuple[Path, ...]:
        """The job's style masks copied into its work folder (the copies are what the worker
        reads). InputError (the job fails) when one is missing or no longer valid."""
        if not job.masks:
            return ()
        check_masks(job.masks, self.inbox, job.source, self.inbox / job.source,
                    kind_of(job.source), self.config.limits.max_pixels)
        return link_masks([mask_path(self.inbox, job.source, m) for _, m in job.masks],
                          work / INPUT_FOLDER / MASKS_FOLDER)

    def _drop(self, job: Job, path: Path, why_not: str, mono: float) -> None:
        self.ledger.forget(job.id)
        self._forget_path(path)
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        log.info("dropped job %d: %s was %s before it was processed", job.id, job.source,
                 why_not)
        self.tracker.observe(path, mono)  # a replacement is a job of its own

    def _output_for(self, job: Job, kind: str, style: str, *, fresh: bool = False) -> Path:
        """The job's recorded output, or a new free name recorded now (before publishing)."""
        if job.output and not fresh:
            return Path(job.output)
        reserved = {j.output for j in self.ledger.active() if j.output and j.id != job.id}
        if job.output:
            reserved.add(job.output)
        base = outcome.output_base(self.outbox, job.source, style, kind)
        output = outcome.choose_output(base, reserved)
        self.ledger.set_output(job.id, str(output))
        return output

    def _complete(self, job: Job, output: Path, summary: str) -> None:
        self.ledger.complete(job.id, str(output), self._clock())
        failpoint("daemon.completed")
        log.info("done %s -> %s (%s)", job.source, output, summary)
        self.hooks.emit(Event("done", job.source, str(output), "",
                              self._clock() - (job.started or self._clock())))
        path = self.inbox / job.source
        try:
            what = outcome.finish_source(path, job, self.config)
        except OSError as exc:
            what = f"could not handle the source ({exc.strerror or exc}); will retry"
        self._forget_path(path)
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        log.info("%s: %s", job.source, what)  # the job's last line: nothing of it is left

    # ----------------------------------------------------------------- noticing and queueing

    def _intake(self, now: float, mono: float) -> None:
        while self._woken:
            self._take(self._woken.pop(0), now, mono)
        while True:
            try:
                path = self.events.get_nowait()
            except queue.Empty:
                break
            self._take(path, now, mono)
        self._check_inbox(mono)
        due = [(p, j) for t, p, j in self._recheck if t <= mono]
        if due:  # failed as unreadable: unchanged since? then it goes to failed/
            self._recheck = [r for r in self._recheck if r[0] > mono]
            for path, job_id in due:
                job = self.ledger.get(job_id)
                if job is not None and job.state == "failed" and \
                        outcome.source_changed(path, job.content_key) is None:
                    self._finish_failed(job, path, now, said=True)
                    self._announce_failed(job, job.finished or now)
                else:  # it changed: a copy that paused; its new bytes are a new job
                    self.tracker.observe(path, mono)
        if mono >= self._next_rescan:
            self._next_rescan = mono + self.config.daemon.rescan_seconds
            for path in scan_inbox(self.inbox):
                self._notice(path, mono, scan=True)
        for path in self.tracker.due(mono):
            failpoint("intake.settled")
            try:
                self._enqueue(path, now)
            except Exception as exc:  # noqa: BLE001 - one file must never stop the daemon
                log.error("could not queue %s: %s: %s", path, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)

    def _event(self, path: Path, mono: float) -> None:
        if path == self.inbox:  # the inbox folder itself was deleted or moved away
            self._check_inbox(mono, force=True)
        else:
            self._notice(path, mono)

    def _check_inbox(self, mono: float, *, force: bool = False) -> None:
        """Re-arm the watch when the inbox folder was removed and came back, was replaced,
        or its watch died. A missing inbox is waited for, never re-created: it may be a
        mount that is not up yet, and files written into the bare mount point would hide
        under the mount later."""
        if not force and mono < self._next_inbox_check:
            return
        ident = _folder_identity(self.inbox)
        self._next_inbox_check = mono + (INBOX_CHECK_SECONDS if ident is not None
                                         else INBOX_MISSING_POLL_SECONDS)
        if ident is not None and ident == self._inbox_id and self._observer_alive():
            return
        if ident is None:
            if self._inbox_id is not None:
                log.warning("the inbox %s is gone; waiting for it to come back (checked every "
                            "%.0f s)", self.inbox, INBOX_MISSING_POLL_SECONDS)
                self._inbox_id = None
                self._stop_observer()
            return
        if self._inbox_id is None:
            log.warning("the inbox %s is back; watching it again", self.inbox)
        elif ident != self._inbox_id:
            log.warning("the inbox %s was replaced by another folder; watching that one",
                        self.inbox)
        else:
            log.warning("the watch on the inbox %s stopped; starting it again", self.inbox)
        self._stop_observer()
        self._inbox_id = ident
        self._start_observer()
        for path in scan_inbox(self.inbox):
            self._notice(path, mono, scan=True)

    def _observer_alive(self) -> bool:
        observer = self._observer
        if not self._watch:
            return True
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def _notice(self, path: Path, mono: float, *, scan: bool = False) -> None:
        sig = regular_signature(path)
        if sig is None or self._known.get(path) == sig:
            return
        if path not in self.tracker:  # once per arrival, not per write of a long copy
            log.info("noticed %s%s", self._rel(path), " (scan)" if scan else "")
        self.tracker.observe(path, mono)

    def _enqueue(self, path: Path, now: float) -> None:
        sig = regular_signature(path)
        if sig is None or self._known.get(path) == sig:
            return
        if sig[0] == 0:
            # Most likely a copy that has not started writing: failing it would move the file
            # while its writer still holds it open. Taken once it has content.
            log_once(("empty", path, sig), logging.INFO,
                     "left alone: %s is empty (0 bytes); it is taken once it has content",
                     self._rel(path))
            self._remember(path, sig)
            return
        try:
            rel = relative_source(self.inbox, path)
            key = content_key(path)
        except ValueError:
            return  # not inside the inbox (a moved-out file's stale event)
        except FileNotFoundError:
            return
        except InputError as exc:
            log.info("left alone: %s", exc)
            return
        except OSError as exc:
            log.warning("cannot read %s (%s); trying again at the next rescan", path,
                        exc.strerror or exc)
            return
        prior = self.ledger.find(rel, key)
        if prior is not None and prior.state == "failed" and _untouched_since(path,
                                                                              prior.finished):
            self._remember(path, sig)
            self._finish_failed(prior, path, now)
            return
        intake = take(self.inbox, path, self.config)
        job = self.ledger.enqueue(rel, key, intake.style, intake.settings, now, intake.masks)
        self._remember(path, sig)
        if job is None:
            self._already_known(path, rel, key)
            return
        if intake.error is not None:  # refused at the door: no worker's turn is spent on it
            self._fail(job, intake.error, now, permanent=True, settings=intake.settings,
                       hold=intake.unreadable, refused=True)
            return
        extra = f", sidecar {intake.sidecar.name}" if intake.sidecar else ""
        log.info("queued %s (job %d, style %s%s)", rel, job.id, intake.style, extra)

    def _already_known(self, path: Path, rel: str, key: str) -> None:
        """The same bytes are queued, running or done. Done but still here: we were killed
        between marking it done and moving the source; finish that now."""
        job = self.ledger.find(rel, key)
        if job is None or job.state != "done" or self.config.daemon.originals == "keep":
            return
        what = outcome.finish_source(path, job, self.config)
        log.info("%s was already done (%s); %s", rel, job.output, what)
        self._forget_path(path)

    def _finish_failed(self, job: Job, path: Path, now: float, *, said: bool = False) -> None:
        """The job failed but its source is still here, untouched since: we were killed
        between marking it failed and moving it, or (``said``: its failure is in the log
        already) it was held for a while in case it was a copy still in progress. Finish
        that move now."""
        try:
            config = job_config(self.config, job.settings, self.inbox)
        except ConfigError:
            config = self.config
        reason = job.error or "failed"
        moved = outcome.fail_source(path, job, reason, config, job.settings,
                                    job.finished or now)
        if said:
            log.info("%s: moved to %s", job.source, moved)
        else:
            log.info("%s had already failed (%s); moved to %s", job.source, reason, moved)
        self._forget_path(path)

    def _remember(self, path: Path, sig: tuple[int, int]) -> None:
        if len(self._known) > KNOWN_LIMIT:
            self._known.clear()
        self._known[path] = sig

    def _forget_path(self, path: Path) -> None:
        self._known.pop(path, None)

    # ----------------------------------------------------------------- failures

    def _failed(self, job: Job, kind: str, reason: str, now: float, mono: float) -> None:
        """A worker reported that ``job`` failed (see `nstd.daemon.jobspec` for the kinds)."""
        if kind == "stopped":
            self.ledger.release(job.id, now)
            log.info("stopped %s: back in the queue (%s)", job.source, reason)
        elif kind == "oom":
            self._shrink(job, reason)
        elif kind == "name_taken":
            log.warning("%s; choosing another name", reason)
            current = self.ledger.get(job.id) or job
            label = Path(current.output or "x").stem.rsplit(".", 1)[-1]
            self._output_for(current, kind_of(job.source) or "image", label, fresh=True)
            self.ledger.release(job.id, now)
        elif kind == "input":
            path = self.inbox / job.source
            if outcome.source_changed(path, job.content_key) is not None:
                # Read as truncated, and the file changed since: a copy still in progress.
                self.ledger.forget(job.id)
                self._forget_path(path)
                shutil.rmtree(self.work / str(job.id), ignore_errors=True)
                log.warning("%s changed while it was read (%s): a copy still in progress? "
                            "It is taken again once it settles", job.source, reason)
                self.tracker.observe(path, mono)
            else:
                self._fail(job, reason, now, permanent=True, hold=True)
        else:
            self._fail(job, reason, now, permanent=(kind == "permanent"))

    def _shrink(self, job: Job, reason: str) -> None:
        current = self.ledger.get(job.id) or job
        try:
            config = job_config(self.config, current.settings, self.inbox)
        except ConfigError:
            config = self.config
        # Never a smaller output: the size is the user's choice. A smaller budget makes the
        # engine evaluate the image by smaller tiles (nstd.engine.tiled), with the same
        # result, so a video's stored frames stay valid too.
        model = config.model
        if model.max_memory_gb == "auto":
            key, old, floor = "auto_memory_share", model.auto_memory_share, MIN_MEMORY_SHARE
        else:
            key, old, floor = "max_memory_gb", float(model.max_memory_gb), MIN_MEMORY_GB
        new = round(old * OOM_SHRINK, 4)
        if new < floor:
            self._fail(job, f"{reason} (already at the smallest memory budget)", self._clock(),
                       permanent=True)
            return
        settings = dict(current.settings)
        settings["model"] = {**dict(settings.get("model") or {}), key: new}
        self.ledger.set_settings(job.id, settings)
        log.warning("%s: out of memory with model.%s %s; the next attempt uses %s (smaller "
                    "tiles, same output size)", job.source, key, old, new)
        self._fail(job, reason, self._clock(), permanent=False)

    def _fail(self, job: Job, reason: str, now: float, *, permanent: bool,
              settings: dict[str, Any] | None = None, hold: bool = False,
              refused: bool = False) -> None:
        """Record a failed attempt; when the job is failed for good, move its source to
        failed/ (``hold``: not yet; the file is looked at again after a while, and moved
        then only if it has not changed: a copy that paused is not a broken file).
        ``refused``: at intake, before any attempt (logged as such)."""
        d = self.config.daemon
        # The linked source goes first (it is taken again at the next claim): unlinking it
        # changes the source's ctime, which must stay older than the failure's time (see
        # _untouched_since).
        shutil.rmtree(self.work / str(job.id) / INPUT_FOLDER, ignore_errors=True)
        now = max(now, self._clock())
        current = self.ledger.get(job.id)
        if current is not None and current.output and not os.path.lexists(current.output):
            self.ledger.set_output(job.id, None)  # nothing was published under that name
        try:
            updated = self.ledger.fail(job.id, reason, now, permanent=permanent,
                                       max_attempts=d.max_attempts,
                                       backoff_seconds=d.retry_backoff_seconds)
        except sqlite3.Error:
            log.warning("%s failed (%s), and the ledger cannot record it", job.source, reason)
            raise
        if updated.state == "queued":
            log.warning("attempt %d of %s failed: %s; retrying in %s", updated.attempts,
                        job.source, reason, format_duration(updated.not_before - now))
            return
        if refused:
            log.error("refused %s: %s", job.source, reason)
        else:
            log.error("failed %s after %s: %s", job.source,
                      plural(updated.attempts, "attempt"), reason)
        if not hold:  # a held file is announced once it goes to failed/ (see _intake)
            self._announce_failed(updated, now)
        failpoint("daemon.failed_marked")
        path = self.inbox / job.source
        shutil.rmtree(self.work / str(job.id), ignore_errors=True)
        if hold:  # still known: a rescan must not notice it (and log it) again meanwhile
            self._recheck.append((self._mono() + INPUT_HOLD_SETTLES * d.settle_seconds, path,
                                  job.id))
            return
        used = updated.settings if settings is None else settings
        try:
            config = job_config(self.config, used, self.inbox)
        except ConfigError:
            config = self.config
        try:
            moved = outcome.fail_source(path, updated, reason, config, used, now)
        except OSError as exc:
            log.error("could not move %s to %s: %s", path, d.failed, exc.strerror or exc)
            moved = None
        if moved is not None:
            log.info("%s: moved to %s", job.source, moved)
            self._forget_path(path)

    def _clean_work_dirs(self) -> None:
        """Remove work folders of jobs that are no longer queued or running."""
        if not self.work.is_dir():
            return
        live = {str(j.id) for j in self.ledger.active()}
        for entry in self.work.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry.name.isdigit() \
                    and entry.name not in live:
                shutil.rmtree(entry, ignore_errors=True)
                log.info("removed the work folder of finished job %s", entry.name)

    def _ledger_write(self, write: Callable[..., Any], *args: Any) -> None:
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

    # ----------------------------------------------------------------- systemd

    def _healthy(self, mono: float) -> bool:
        """Every busy worker has reported within daemon.stall_seconds."""
        stall = self.config.daemon.stall_seconds
        return all(mono - slot.heard <= stall for slot in self._slots if slot.state == "busy")

    def _ping(self, mono: float) -> None:
        """WATCHDOG=1 on the supervisor's own timer, while its loop runs and the busy
        workers report: a hung worker is killed and restarted instead, and a hung loop
        gets the service restarted by systemd."""
        if self._watchdog_every is not None and mono - self._last_ping >= \
                self._watchdog_every * PING_FRACTION and self._healthy(mono):
            self.notifier.watchdog()
            self._last_ping = mono

    def _status_line(self) -> str:
        counts = self.ledger.counts()
        paused = describe_pause(self.gate.state(self._clock()))
        if paused and not self._busy():
            return f"{paused}; {counts['queued']} queued"
        queued = f"{counts['queued']} queued"
        busy = [slot for slot in self._slots if slot.state == "busy" and slot.job]
        if not busy:
            failed = f", {counts['failed']} failed" if counts["failed"] else ""
            return f"idle; {queued}{failed}"
        parts = []
        for slot in busy:
            assert slot.job is not None
            where = (f"{STAGES.get(slot.stage, slot.stage)} {slot.done}/{slot.total}, "
                     f"ETA {format_duration(slot.eta)}" if slot.total else "starting")
            parts.append(f"{slot.job.source}: {where}")
        return f"{'; '.join(parts)}; {queued}"

    def _set_status(self) -> None:
        if not self.notifier.enabled:
            return
        line = self._status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def _rel(self, path: Path) -> str:
        try:
            return relative_source(self.inbox, path)
        except ValueError:
            return str(path)


Daemon = Supervisor  # the name before the supervisor/worker split


# --------------------------------------------------------------------------- helpers


def _quiet_inotify_stop(record: logging.LogRecord) -> bool:
    """Drop watchdog's harmless "called when the thread is inactive" error: its emitter
    races with its own stop() (watchdog 7), and an ERROR line at every shutdown would only
    alarm whoever reads the journal."""
    return "called when the thread is inactive" not in record.getMessage()


def _folder_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a real folder (not a symlink), or None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _untouched_since(path: Path, when: float | None) -> bool:
    """True when ``path``'s inode has not changed (ctime) since ``when`` (epoch seconds).
    A rename sets the ctime, so a file moved back into the inbox is "touched"."""
    if when is None:
        return False
    try:
        return os.lstat(path).st_ctime < when
    except OSError:
        return False

"""The supervisor's side of the actors: a queue of units, one thread per actor, re-runs.

Each actor place has a thread that takes the next unit (by job order, then the order the job
planned: `nstd.cluster.schedule`), starts it on its actor and stores what streams back through
the unit's callbacks; a unit put back after a death keeps its place. An actor
that dies (``ray.kill``, a crash, its node gone) costs its unit nothing but the frames in
flight: the place makes a new actor, and the unit goes back to the queue, where `UnitTask.build`
is asked again what is left (the frames stored on the supervisor's disk decide), so it resumes
from its last stored frame on whichever actor is free first. A unit whose actor dies
``max_deaths`` times fails its job (a file that kills every actor must not loop for ever). An
actor that sends nothing for ``stall_seconds`` while running a video unit is killed the same
way.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("nstd.cluster")

READY_SECONDS = 600.0  # an actor loading the network (and fetching weights) on a cold node
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
FATAL_STARTS = 3  # failed starts of an actor, none ever up: the pool cannot run anything


class ActorGone(Exception):
    """The actor running a unit died (or was killed as stalled)."""


@dataclass
class UnitTask:
    """A unit of one job, as the pool sees it.

    build() -> (unit mapping, known frames, args) for its next start, or None when nothing is
    left (every frame stored): asked at each (re)start. on_frame(FrameOut) stores one result;
    on_end(error or None) is called exactly once, when the unit finished, failed or was
    cancelled.
    """

    job_id: int
    order: int  # the job's place in the queue (earlier jobs first)
    frames: int  # the unit's length
    build: Callable[[], tuple[dict[str, Any], dict[int, Any], tuple[Any, ...]] | None]
    on_frame: Callable[[Any], None]
    on_end: Callable[[BaseException | None], None]
    label: str = ""
    rank: int = 0  # its place within the job's queue (`nstd.cluster.schedule`)
    stall: bool = True  # killed when silent for stall_seconds (an image sends one result)
    deaths: int = 0
    cancelled: bool = False
    seq: int = field(default_factory=itertools.count().__next__)

    def key(self) -> tuple[int, int, int]:
        return (self.order, self.rank, self.seq)


@dataclass
class Place:
    """One actor place: its actor, what it runs, and how fast (for `nstd status`)."""

    index: int
    actor: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    task: UnitTask | None = None
    started: float = 0.0
    last: float = 0.0  # monotonic: its last frame
    frames: int = 0  # frames of the current unit
    killed: bool = False
    restarts: int = 0

    def describe(self, now: float) -> dict[str, Any]:
        busy = self.task is not None
        rate = self.frames / (now - self.started) if busy and now > self.started else 0.0
        return {"name": f"actor {self.index + 1}", "state": "busy" if busy else
                ("idle" if self.actor is not None else "starting"),
                "node": self.info.get("node"), "device": self.info.get("device"),
                "pid": self.info.get("pid"), "unit": self.task.label if busy else None,
                "frames_per_second": round(rate, 3)}


class ActorPool:
    """``count`` actors made by ``make_actor()`` (a Ray actor handle), fed from one queue."""

    def __init__(self, count: int, make_actor: Callable[[], Any], *, stall_seconds: float,
                 max_deaths: int, clock: Callable[[], float] = time.monotonic) -> None:
        import ray

        self._ray = ray
        self._make = make_actor
        self.stall_seconds = stall_seconds
        self.max_deaths = max_deaths
        self._clock = clock
        self._queue: queue.PriorityQueue[tuple[tuple[int, int, int], UnitTask | None]] = \
            queue.PriorityQueue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.places = [Place(i) for i in range(count)]
        self.ready = threading.Event()  # at least one actor is up
        self.fatal: str | None = None  # set when no actor ever starts
        self.changed = threading.Event()  # ready or fatal
        self._threads = [threading.Thread(target=self._serve, args=(p,), daemon=True,
                                          name=f"actor{p.index + 1}") for p in self.places]
        self._monitor = threading.Thread(target=self._watch, daemon=True, name="actor-watch")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._monitor.start()

    def submit(self, task: UnitTask) -> None:
        self._queue.put((task.key(), task))

    def cancel(self, job_id: int) -> None:
        """End a job's units: queued ones end at once, running ones between frames."""
        with self._lock:
            running = [p for p in self.places if p.task is not None and p.task.job_id == job_id]
        kept: list[tuple[tuple[int, int, int], UnitTask | None]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[1] is not None and item[1].job_id == job_id:
                item[1].cancelled = True
                item[1].on_end(None)
            else:
                kept.append(item)
        for item in kept:
            self._queue.put(item)
        for place in running:
            assert place.task is not None
            place.task.cancelled = True
            try:
                place.actor.stop.remote(job_id)
            except Exception:  # noqa: BLE001 - a dead actor: its unit ends anyway
                pass

    def kill_actor(self, index: int) -> None:
        """``ray.kill`` the actor of place ``index`` (tests; stalled actors)."""
        place = self.places[index]
        if place.actor is not None:
            place.killed = True
            self._ray.kill(place.actor, no_restart=True)

    def describe(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return [p.describe(now) for p in self.places]

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        for _ in self._threads:
            self._queue.put(((-1, 0, 0), None))
        for place in self.places:
            if place.actor is not None:
                try:
                    self._ray.kill(place.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - shutting down
                    pass

    # ----------------------------------------------------------------- a place's thread

    def _bring_up(self, place: Place) -> bool:
        while not self._closed.is_set():
            try:
                actor = self._make()
                info = self._ray.get(actor.ready.remote(), timeout=READY_SECONDS)
            except Exception as exc:  # noqa: BLE001 - no actor: wait, try again
                delay = RESTART_BACKOFF[min(place.restarts, len(RESTART_BACKOFF) - 1)]
                place.restarts += 1
                if place.restarts >= FATAL_STARTS and not self.ready.is_set():
                    # No actor ever came up: the network cannot load anywhere (weights,
                    # device). Said once, so the supervisor can stop instead of waiting.
                    self.fatal = f"no actor could start ({_short(exc)})"
                    self.changed.set()
                log.error("actor %d could not start (%s); retrying in %g s", place.index + 1,
                          _short(exc), delay)
                self._closed.wait(delay)
                continue
            with self._lock:
                place.actor, place.info, place.killed = actor, info, False
            log.info("actor %d ready on %s (device %s, pid %s)", place.index + 1,
                     info.get("node"), info.get("device"), info.get("pid"))
            self.ready.set()
            self.changed.set()
            return True
        return False

    def _serve(self, place: Place) -> None:
        try:
            self._serve_units(place)
        except BaseException:
            if not self._closed.is_set():
                raise
            # Ray shut down under a call of this thread (it raises SystemExit): we are done.

    def _serve_units(self, place: Place) -> None:
        while not self._closed.is_set():
            if place.actor is None and not self._bring_up(place):
                return
            _, task = self._queue.get()
            if task is None or self._closed.is_set():
                return
            if task.cancelled:
                continue
            try:
                self._run(place, task)
            except ActorGone as exc:
                with self._lock:
                    gone, place.actor, place.task = place.actor, None, None
                # Ray may call it only "temporarily unavailable" (a network blip, not a lost
                # node): make sure the old actor cannot live on holding its GPU.
                try:
                    self._ray.kill(gone, no_restart=True)
                except Exception:  # noqa: BLE001 - dead already
                    pass
                task.deaths += 1
                if task.cancelled:
                    task.on_end(None)
                elif task.deaths >= self.max_deaths:
                    task.on_end(RuntimeError(f"its actor died {task.deaths} times on "
                                             f"{task.label} ({exc})"))
                else:
                    log.warning("actor %d died on %s (%s); the unit goes back to the queue",
                                place.index + 1, task.label, exc)
                    self.submit(task)
            except BaseException as exc:  # noqa: BLE001 - the unit's own error
                with self._lock:
                    place.task = None
                task.on_end(exc)
            else:
                with self._lock:
                    place.task = None
                task.on_end(None)

    def _run(self, place: Place, task: UnitTask) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        built = task.build()
        if built is None:
            return  # everything stored already
        unit, known, args = built
        now = self._clock()
        with self._lock:
            place.task, place.started, place.last, place.frames = task, now, now, 0
        try:
            stream = place.actor.run.remote(unit, *args, known)
            for ref in stream:
                item = self._ray.get(ref)
                with self._lock:
                    place.last, place.frames = self._clock(), place.frames + 1
                task.on_frame(item)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) \
                else exc
            if isinstance(cause, RayActorError):
                raise ActorGone(_short(cause)) from None
            raise cause from None
        except RayActorError as exc:
            raise ActorGone("killed as stalled" if place.killed else _short(exc)) from None
        except Exception as exc:
            if type(exc).__module__.startswith("ray."):  # object lost, node died, ...
                raise ActorGone(_short(exc)) from None
            raise

    def _watch(self) -> None:
        while not self._closed.wait(1.0):
            now = self._clock()
            with self._lock:
                stalled = [p for p in self.places if p.task is not None and p.task.stall
                           and not p.killed and now - p.last > self.stall_seconds]
            for place in stalled:
                log.error("actor %d sent nothing for %.0f s on %s (limit %g s: "
                          "daemon.stall_seconds); killing it", place.index + 1,
                          now - place.last, place.task.label if place.task else "?",
                          self.stall_seconds)
                self.kill_actor(place.index)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]

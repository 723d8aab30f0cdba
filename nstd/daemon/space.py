"""Free disk space: no job starts, and a running job stops between frames, while the work or
outbox filesystem lacks room for what the job still has to write.

What a job needs (`estimate`), from its output size (the source's, scaled down so its longest
side is ``style.max_side``):

- a video: each frame is stored in the work folder as a 16-bit RGB PNG until the video is
  encoded. `FRAME_BYTES_PER_PIXEL` = 6, the raw size: a stylized frame's low bytes are close
  to noise, so zlib saves little on them, and on incompressible data its overhead is a few
  bytes per block; the raw size is a bound a real frame stays under. The encoded result
  (`VIDEO_BYTES_PER_PIXEL` = 0.25 a frame pixel: 2 bits, several times what libx264 at
  the writer's crf 18 writes even for busy stylized pictures) goes to the outbox. A job that
  resumes needs room only for the frames it has not stored yet.
- an image: `IMAGE_COPIES` x its raw 16-bit RGB size in the outbox (the temporary file and the
  published one, with room to spare).

Plus ``daemon.min_free_mb`` on each filesystem, left for everything else. When the work and
outbox folders share a filesystem, their needs add up.

When short (`SpaceGuard`): the job is not claimed (or its worker is told to park it, as
outside ``daemon.active_hours``: stored frames are kept), no attempt is counted, one
``disk-low`` event goes out, and "waiting for N MB free on <path>" shows in ``nstd status``
(from `SPACE_STATUS` in the state folder), on the status page and in the STATUS= line. A job
that fails with ENOSPC anyway is put back the same way, and waits as its claim would have (or,
when free space shows room, a while: `SpaceGuard.after_enospc`). The free space is looked at
again every `CHECK_SECONDS`; work resumes by itself once there is room.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nstd.config import Config
from nstd.daemon.hooks import Event, Hooks
from nstd.daemon.intake import job_config
from nstd.daemon.jobspec import kind_of
from nstd.daemon.ledger import Job
from nstd.errors import ConfigError
from nstd.progress import format_duration

log = logging.getLogger("nstd.daemon.supervisor")

MB = 1024 * 1024  # as df -m counts
FRAME_BYTES_PER_PIXEL = 6.0  # a stored frame: 16-bit RGB PNG, bounded by its raw size
VIDEO_BYTES_PER_PIXEL = 0.25  # the encoded video, per frame pixel (2 bits)
IMAGE_COPIES = 3  # an image job: this many times its raw 16-bit RGB size in the outbox
CHECK_SECONDS = 5.0  # free space is looked at this often while a job runs or waits
ENOSPC_WAIT_MAX = 300.0  # ENOSPC again and again while free space shows room: longest wait
SPACE_STATUS = "space.json"  # in daemon.state while waiting, for `nstd status`

FreeSpace = Callable[[Path], int]  # bytes an unprivileged writer may still use under a path


def free_bytes(path: Path) -> int:
    """The space left to an unprivileged writer on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class Need:
    """What a job writes: ``frames`` stored frames of ``frame_bytes`` each in the work
    folder, then ``output_bytes`` in the outbox."""

    frame_bytes: int = 0
    frames: int = 0
    output_bytes: int = 0

    def remaining(self, stored: int = 0) -> tuple[int, int]:
        """(work bytes, outbox bytes) still to write once ``stored`` frames are stored."""
        return self.frame_bytes * max(0, self.frames - stored), self.output_bytes


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The output's size: the source's, shrunk so its longest side is at most max_side."""
    longest = max(width, height, 1)
    scale = min(1.0, max_side / longest)
    return max(1, round(width * scale)), max(1, round(height * scale))


def job_need(job: Job, config: Config, inbox: Path) -> Need:
    """`estimate` for a queued job, with its own settings (``style.max_side``...)."""
    try:
        config = job_config(config, job.settings, inbox)
    except ConfigError:
        pass  # the claim reports it
    return estimate(inbox / job.source, config)


def estimate(path: Path, config: Config) -> Need:
    """What the job on ``path`` (with its merged ``config``) will write; nothing when the
    file cannot be read here (the worker reports why)."""
    kind = kind_of(path)
    try:
        if kind == "video":
            from nstd.media.container import probe_video

            info = probe_video(path, config.limits, scan=False)
            w, h = output_size(info.width, info.height, config.style.max_side)
            return Need(int(w * h * FRAME_BYTES_PER_PIXEL), info.frames,
                        int(info.frames * w * h * VIDEO_BYTES_PER_PIXEL))
        if kind == "image":
            from nstd.media.images import image_size

            w, h = output_size(*image_size(path), config.style.max_side)
            return Need(output_bytes=IMAGE_COPIES * w * h * 6)
    except Exception:  # noqa: BLE001 - an estimate never fails a job: the worker reports why
        pass
    return Need()


@dataclass(frozen=True)
class Shortage:
    """``path``'s filesystem has ``free`` bytes where ``required`` are needed."""

    path: Path
    required: int
    free: int

    def describe(self) -> str:
        return f"waiting for {_mb(self.required)} MB free on {self.path}"

    def to_dict(self) -> dict[str, Any]:
        return {"waiting": True, "path": str(self.path), "need_mb": _mb(self.required),
                "free_mb": self.free // MB, "text": self.describe()}


def _mb(count: int) -> int:
    return -(-count // MB)  # rounded up: "waiting for 1 MB" never means 0.4


class SpaceGuard:
    """Checks the work and outbox filesystems, and remembers one shortage at a time."""

    def __init__(self, config: Config, hooks: Hooks, free: FreeSpace = free_bytes) -> None:
        d = config.daemon
        self.hooks = hooks
        self.work = Path(d.work)
        self.outbox = Path(d.outbox)
        self.reserve = int(d.min_free_mb * MB)
        self.status_file = Path(d.state) / SPACE_STATUS
        self.free = free
        self.waiting: Shortage | None = None
        self.next_check = float("-inf")
        self._next_running_check = float("-inf")
        self._enospc_with_room = 0  # ENOSPC in a row while free space showed room

    def running_check_due(self, mono: float) -> bool:
        """True every CHECK_SECONDS: time to look at the running jobs' room."""
        if mono < self._next_running_check:
            return False
        self._next_running_check = mono + CHECK_SECONDS
        return True

    def _demands(self, need: Need, stored: int) -> list[Shortage]:
        """Each filesystem's free bytes against what it must keep (reserve + the rest of
        ``need`` that lands on it); unreadable ones are left out (the start-up checks
        report a missing folder)."""
        work, outbox = need.remaining(stored)
        wanted: dict[Any, tuple[Path, int]] = {}
        for path, amount in ((self.work, work), (self.outbox, outbox)):
            key = _device(path)
            first, total = wanted.get(key, (path, 0))
            wanted[key] = (first, total + amount)
        demands = []
        for path, amount in wanted.values():
            try:
                demands.append(Shortage(path, self.reserve + amount, self.free(path)))
            except OSError:
                continue
        return demands

    def short_for(self, need: Need, stored: int = 0) -> Shortage | None:
        """The first filesystem without room for the rest of ``need``, or None."""
        return next((d for d in self._demands(need, stored) if d.free < d.required), None)

    def admit(self, need: Need, stored: int, mono: float, what: str) -> bool:
        """True when there is room for the rest of ``need``; else waits for it (``what``:
        the job, for the log)."""
        shortage = self.short_for(need, stored)
        if shortage is None:
            return True
        log.info("%s waits: %s", what, shortage.describe())
        self.wait_for(shortage, mono)
        return False

    def wait_for(self, shortage: Shortage, mono: float, *, seconds: float = CHECK_SECONDS,
                 announce: bool = True) -> None:
        """Remember ``shortage`` and look again in ``seconds``; a new one is logged and (with
        ``announce``) sent as a ``disk-low`` event: once per shortage, however many jobs
        wait."""
        new = self.waiting is None
        self.waiting = shortage
        self.next_check = mono + seconds
        if new:
            if shortage.free < shortage.required:
                log.warning("%s (%d MB free): no job starts until there is room",
                            shortage.describe(), shortage.free // MB)
            self._write_status(shortage)
            if announce:
                self.hooks.emit(Event("disk-low", reason=shortage.describe()))

    def after_enospc(self, need: Need, stored: int, mono: float) -> None:
        """A job ran out of space anyway: its estimate was short, or something else filled
        the disk. Short now: wait as its claim would have. Room now (a file since deleted,
        or no inodes or quota left, which free space does not show): wait CHECK_SECONDS,
        doubling while it goes on (up to `ENOSPC_WAIT_MAX`), with one event for the run."""
        demands = self._demands(need, stored)
        shortage = next((d for d in demands if d.free < d.required), None)
        if shortage is not None:
            self._enospc_with_room = 0
            self.wait_for(shortage, mono)
        elif demands:
            self._enospc_with_room += 1
            seconds = min(ENOSPC_WAIT_MAX, CHECK_SECONDS * 2 ** (self._enospc_with_room - 1))
            log.warning("no space left on the disk although free space shows room (no inodes "
                        "or quota left?); trying again in %s", format_duration(seconds))
            self.wait_for(min(demands, key=lambda d: d.free), mono, seconds=seconds,
                          announce=self._enospc_with_room == 1)

    def job_done(self) -> None:
        """A job was published: the disk takes writes again."""
        self._enospc_with_room = 0

    def blocked(self, mono: float) -> bool:
        """True while waiting for space; looks again every CHECK_SECONDS and clears the
        shortage once its filesystem has the room."""
        shortage = self.waiting
        if shortage is None:
            return False
        if mono < self.next_check:
            return True
        self.next_check = mono + CHECK_SECONDS
        try:
            free = self.free(shortage.path)
        except OSError:
            return True
        if free < shortage.required:
            return True
        log.info("%d MB free on %s again; going on", free // MB, shortage.path)
        self.waiting = None
        self._write_status(None)
        return False

    def wait_seconds(self, mono: float) -> float | None:
        return None if self.waiting is None else self.next_check - mono

    def state(self) -> dict[str, Any]:
        """``{"waiting": False}``, or the shortage (path, need_mb, free_mb, text)."""
        return self.waiting.to_dict() if self.waiting is not None else {"waiting": False}

    def clear_status(self) -> None:
        """No waiting shown in `nstd status` (at start and stop)."""
        self._write_status(None)

    def _write_status(self, shortage: Shortage | None) -> None:
        try:
            if shortage is None:
                self.status_file.unlink(missing_ok=True)
            else:
                tmp = self.status_file.with_name(f".{SPACE_STATUS}.tmp")
                tmp.write_text(json.dumps(shortage.to_dict()))
                os.replace(tmp, self.status_file)
        except OSError:
            pass  # status only; the disk may well be full


def stored_frames(job: Job) -> int:
    """Frames a resumed video has stored already (its last recorded progress)."""
    return (job.progress_done or 0) if kind_of(job.source) == "video" else 0


def read_status(state: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a running daemon waits for (`SPACE_STATUS`), for `nstd status`; None: nothing."""
    try:
        data = json.loads((Path(state) / SPACE_STATUS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("waiting") else None


def _device(path: Path) -> Any:
    try:
        return os.stat(path).st_dev
    except OSError:
        return path

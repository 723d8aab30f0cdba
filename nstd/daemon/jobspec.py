"""The contract between the supervisor and a worker: one job, and the pipe they talk over.

`JobSpec` is everything a worker needs for one job and nothing else: the worker opens no inbox
path, reads no config file and writes no ledger. The supervisor builds it at claim
(`nstd.daemon.supervisor`), after the job's settings were validated at intake
(`check_job`), so a worker only ever gets a job that is allowed to run.

The pipe carries one JSON object per line (JSON escapes newlines inside strings, so a line is
a message whatever a file name holds): the supervisor writes to the worker's stdin, the worker
writes to a private copy of its stdout (its fd 1 points at stderr, so a stray print from a
library can never corrupt the protocol).

    supervisor -> worker   {"type": "init", "config": {...}, "threads": N}
                           {"type": "job", "spec": {...}}
                           {"type": "stop"}            finish/park the current job, then exit
                           {"type": "park"}            park the current job between frames
                                                       (as a stop: kind "stopped"), stay up;
                                                       the daemon paused (nstd.daemon.schedule)
    worker -> supervisor   {"event": "ready", "device": "cuda:0"}
                           {"event": "fatal", "reason": ...}   cannot load the network: stop
                           {"event": "progress", "job": id, "stage": probe|plan|iteration|
                                     frame|verify, "done": n, "total": m, "eta": s}
                           {"event": "heartbeat", "job": id}   at most ~1/s, from the work
                           {"event": "published", "job": id, "output": ..., "summary": ...}
                           {"event": "failed", "job": id, "reason": ..., "kind": ...}

Failure kinds: ``transient`` (retried with backoff), ``permanent`` (fails at once), ``input``
(the file is unreadable, truncated or corrupt: permanent, unless the file then changes, which
is a copy still in progress), ``oom`` (retried with half the memory budget: smaller tiles,
the same output size), ``stopped`` (a stop was asked: the job goes back without counting),
``name_taken`` (the recorded output name holds somebody
else's file: another name is chosen), ``no_space`` (ENOSPC: the job goes back without
counting, and the daemon waits for disk space: `nstd.daemon.space`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nstd.config import Config
from nstd.errors import InputError
from nstd.media.kinds import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

INPUT_FOLDER = "input"  # work/<job id>/input/<name>: the linked source
STORE_FOLDER = "store"  # work/<job id>/store/: a video's stored frames (FrameStore root)

FAILURE_KINDS = ("transient", "permanent", "input", "oom", "stopped", "name_taken",
                 "no_space")


@dataclass(frozen=True)
class JobSpec:
    """One job for one worker. Paths are absolute; ``config`` is the merged per-job config
    (`nstd.config.to_mapping` of the daemon's config with the sidecar's overrides)."""

    job_id: int
    name: str  # the inbox-relative source, for messages only: the worker never opens it
    source: str  # the linked (or copied) source in the work folder: the only path read
    kind: str  # image | video
    styles: tuple[str, ...]
    config: dict[str, Any]
    work_dir: str  # a video's frame store
    output: str  # recorded in the ledger before the job was sent
    restart: bool = False  # restart policy: discard stored frames whatever they hold
    verify_existing: bool = False  # the output exists: check it instead of computing
    masks: tuple[str, ...] = ()  # one style mask per style (copies in the work folder), or none

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["styles"] = list(self.styles)
        data["masks"] = list(self.masks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**{**data, "styles": tuple(data["styles"]),
                      "masks": tuple(data.get("masks", ()))})


def kind_of(name: str | os.PathLike[str]) -> str | None:
    """'image' or 'video' from the file name, None for anything else."""
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def check_job(config: Config, kind: str | None) -> list[str]:
    """What makes this job's merged config unusable for its kind (empty: fine).

    Runs at intake, so a job that cannot run fails there with the reason, before any worker
    time is spent or any stored frame is touched. The iteration limits themselves
    (`limits.max_iterations`, `limits.max_frame_iterations`) are checked by
    `nstd.config.parse_config`, which every sidecar merge goes through.
    """
    problems = []
    if kind == "video" and config.style.init == "image":
        problems.append("style.init: 'image' is for images; a video's frames start from "
                        "video.init (each shot's first frame from its content)")
    if config.style.init == "image" and config.style.init_image and \
            not Path(config.style.init_image).is_file():
        problems.append(f"style.init_image: {config.style.init_image} is not a file")
    return problems


def link_source(path: Path, folder: Path, key: str) -> Path:
    """Take the file checked at claim into the job's own folder; return the path to read.

    A hard link (a copy when ``folder`` is on another filesystem) of ``path`` as
    ``folder/<name>``, whose content key must equal ``key``, the one the job was claimed
    with. Why a link and not a passed file descriptor: a descriptor dies with the worker that
    holds it, while a job must survive its worker's death and resume in a new one; a link is a
    name any process can open, survives restarts of both processes, and keeps the very inode
    that was checked, so a symlink or another file swapped into the inbox afterwards is never
    read. The link is opened without following symlinks (`nstd.daemon.ledger.content_key`).

    Raises `InputError` when the file changed between the claim and the link (the caller
    treats the job as replaced), `OSError` when the folder cannot be written.
    """
    from nstd.daemon.ledger import content_key

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if os.path.lexists(target):
        try:
            if content_key(target) == key:
                return target  # taken by an earlier attempt of this job
        except (OSError, InputError):
            pass
        target.unlink()
    try:
        os.link(path, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        # Another filesystem: a copy, with its mtime (the content key includes it).
        shutil.copy2(path, target, follow_symlinks=False)
    try:
        taken = content_key(target)
    except OSError:
        taken = None
    if taken != key:
        target.unlink(missing_ok=True)
        raise InputError(f"{path.name} changed after it was claimed")
    return target


# --------------------------------------------------------------------------- the pipe


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line of JSON."""
    return (json.dumps(message, separators=(",", ":"), default=str) + "\n").encode()


def decode(line: bytes) -> dict[str, Any] | None:
    """A line back to a message; None for a line that is not one (never raises)."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None

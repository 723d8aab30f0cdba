"""Small JPEGs of a job's source ("before") and result ("after"), made once and cached.

    <state>/thumbs/<job id>-<created>-before.jpg, ...-after.jpg   (longest side THUMB_SIDE)

Images are read with Pillow, videos give their first frame through PyAV
(`nstd.media.container.first_frame`, JPEGs by `nstd.media.images.write_jpeg`); no torch. Every
path is found from the job's ledger row and checked to lie inside the daemon's own folders,
so a name in a URL can never lead outside them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from nstd.config import Config
from nstd.daemon.ledger import Job
from nstd.media.container import first_frame
from nstd.media.images import THUMB_SIDE, write_jpeg

log = logging.getLogger(__name__)


def inside(path: Path, folder: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``folder``."""
    try:
        return path.resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):
        return False


def result_file(job: Job, config: Config) -> Path | None:
    """A done job's published output, if it is still in the outbox."""
    if job.state != "done" or not job.output:
        return None
    path = Path(job.output)
    return path if path.is_file() and inside(path, config.daemon.outbox) else None


def source_file(job: Job, config: Config) -> Path | None:
    """Where the job's source is now: the inbox (queued, running, originals: keep), done/
    (moved after success), or failed/; None when it is gone."""
    d = config.daemon
    parts = PurePosixPath(job.source).parts
    for folder in (d.inbox, d.done, d.failed):
        path = Path(folder).joinpath(*parts)
        if path.is_file() and inside(path, folder):
            return path
    return None


def thumbnail(job: Job, which: str, config: Config) -> Path | None:
    """The cached thumbnail ``which`` ('before' or 'after') of ``job``, made now if needed;
    None when its file is gone or cannot be read."""
    # The creation time too: a ledger rebuilt from scratch numbers its jobs from 1 again.
    cache = Path(config.daemon.state) / "thumbs" / f"{job.id}-{int(job.created)}-{which}.jpg"
    if cache.is_file():
        return cache
    if which == "after":
        src = result_file(job, config)
    else:
        src = source_file(job, config)
        if src is None:  # running: the worker wrote the source frame beside its preview
            preview = Path(config.daemon.work) / str(job.id) / "source.jpg"
            src = preview if preview.is_file() else None
    if src is None:
        return None
    try:
        image = first_frame(src, THUMB_SIDE)
        write_jpeg(image, cache)
    except Exception as exc:  # noqa: BLE001 - a file we cannot read has no thumbnail
        log.info("no thumbnail for job %d (%s): %s", job.id, which, exc)
        return None
    return cache

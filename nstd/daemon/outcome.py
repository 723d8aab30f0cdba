"""What happens to a job's files once it ends: the output's name, its check, the source's fate.

    output:  outbox/<same sub-folder>/<stem>.<style>.<ext>   (videos .mp4), never overwritten:
             <stem>.<style>-1.<ext>, -2, ... and never a name another live job has recorded
    done:    verify the output (an image decodes; a video has the expected frame count), then
             daemon.originals: move the source (and its sidecar) to done/<sub-folder>/, keep it,
             or delete it
    failed:  the source (and its sidecar) to failed/<sub-folder>/, with <name>.error.txt
             (reason, attempts, time, the settings used)

A source is only ever moved or deleted when its content key still matches the job's: a file
replaced while its job ran is a new job and is left where it is. Moves never overwrite (a
numbered name is taken instead) and work across filesystems (copy, fsync, rename, unlink).
The error report and the sidecar move first and the source last, so a crash in between leaves
the source in the inbox, where the restarted daemon finishes the move (nstd.daemon.supervisor).

Output names are cut to `MAX_NAME_BYTES` so a source named near the filesystem's limit still
gets an output. `rebuild_ledger` recovers finished jobs from done/ and failed/ when the
ledger was lost.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from nstd.config import Config, LimitsConfig
from nstd.daemon.intake import folder_style, sidecar_for
from nstd.daemon.ledger import Job, Ledger, content_key
from nstd.errors import InputError, OutputError
from nstd.faults import failpoint
from nstd.media import files as fsutil

log = logging.getLogger(__name__)

ERROR_SUFFIX = ".error.txt"
# Output names are cut to this many bytes: most filesystems allow 255, and the hidden temp
# name `.<name>.<pid>.<8 hex>.tmp` it is written under first adds up to ~30 more.
MAX_NAME_BYTES = 200


# --------------------------------------------------------------------------- output names


def output_base(outbox: Path, source: str, style: str, kind: str) -> Path:
    """``outbox/<sub-folder>/<stem>.<style>.<ext>``; ``kind`` 'video' always gives ``.mp4``."""
    rel = PurePosixPath(source)
    name = Path(rel.name)
    suffix = ".mp4" if kind == "video" else name.suffix
    tail = f".{style}{suffix}"
    return outbox.joinpath(*rel.parent.parts) / (_cut(name.stem, MAX_NAME_BYTES - _len(tail))
                                                 + tail)


def _len(text: str) -> int:
    return len(os.fsencode(text))


def _cut(stem: str, limit: int) -> str:
    """``stem`` shortened to at most ``limit`` bytes (whole characters); a source name near
    the filesystem's limit must not make its output name impossible (ENAMETOOLONG)."""
    limit = max(limit, 16)
    while _len(stem) > limit:
        stem = stem[:-1]
    return stem


def choose_output(base: Path, reserved: Collection[str] = (), *, limit: int = 10_000) -> Path:
    """``base``, or ``<stem>-1<ext>``, ``-2``... : the first name that neither exists nor is in
    ``reserved`` (outputs recorded by other live jobs, not yet published)."""
    for n in range(limit + 1):
        candidate = base if n == 0 else base.with_name(f"{base.stem}-{n}{base.suffix}")
        if not os.path.lexists(candidate) and str(candidate) not in reserved:
            return candidate
    raise OutputError(f"no free name like {base} (tried {limit} numbered variants)")


# --------------------------------------------------------------------------- verification


def verify_output(path: Path, kind: str, limits: LimitsConfig,
                  expected_frames: int | None = None, source: Path | None = None,
                  progress: Callable[[int], None] | None = None) -> None:
    """Check a published output before its source is touched. Raises OutputError.

    image: it decodes completely. video: it has ``expected_frames`` frames; when that is not
    known (a restart after the work folder was removed) the source's packets are counted.
    ``progress`` gets the packets counted so far (a long video takes a while to check).
    """
    if not path.is_file():
        raise OutputError(f"the output {path} is missing")
    if kind == "image":
        from nstd.media.images import read_image

        try:
            read_image(path, limits.max_pixels)
        except InputError as exc:
            raise OutputError(f"the output {path.name} does not decode ({exc})") from None
        return
    from nstd.media import container as video

    if expected_frames is None:
        if source is None:
            raise ValueError("verify_output: a video needs expected_frames or its source")
        try:
            expected_frames = video.count_frames(source)
        except InputError as exc:
            raise OutputError(f"cannot check {path.name} against its source ({exc})") from None
    video.verify_video(path, expected_frames, progress)  # raises OutputError saying why


# --------------------------------------------------------------------------- moving files


def move_file(src: Path, folder: Path, name: str | None = None) -> Path:
    """Move ``src`` into ``folder`` (created) under ``name`` or a numbered variant; never
    overwrites. Works across filesystems. Returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = fsutil.unique_path(folder / (name or src.name))
    try:
        os.rename(src, target)
        return target
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # Another filesystem: copy under a temp name beside the target, publish, then unlink.
    tmp = fsutil.temp_path_for(target)
    try:
        shutil.copy2(src, tmp, follow_symlinks=False)  # keeps mtime: the content key holds
        target = fsutil.publish(tmp, fsutil.unique_path(target))
    finally:
        fsutil.remove_quietly(tmp)
    os.unlink(src)
    return target


def source_changed(path: Path, key: str) -> str | None:
    """None when ``path`` still holds the job's bytes (content key ``key``), else why not:
    'gone' or 'replaced'."""
    try:
        return None if content_key(path) == key else "replaced"
    except FileNotFoundError:
        return "gone"
    except (OSError, InputError):
        return "replaced"


def finish_source(path: Path, job: Job, config: Config) -> str:
    """Apply ``daemon.originals`` to a done job's source; returns what happened (for the log).

    Moves to ``done/<sub-folder>/`` (with the sidecar), keeps, or deletes. A source that is
    gone or was replaced is left alone.
    """
    why_not = source_changed(path, job.content_key)
    if why_not is not None:
        return f"source {why_not}, left alone"
    sidecar = sidecar_for(path)
    mode = config.daemon.originals
    if mode == "keep":
        return "source kept"
    if mode == "delete":
        for item in (path, sidecar):
            if item is not None:
                fsutil.remove_quietly(item)
        return "source deleted"
    folder = Path(config.daemon.done).joinpath(*PurePosixPath(job.source).parent.parts)
    moved = _move_with_sidecar(path, sidecar, folder)
    return f"source moved to {moved}"


def _move_with_sidecar(path: Path, sidecar: Path | None, folder: Path,
                       before: Callable[[Path], None] | None = None) -> Path:
    """Move ``path`` into ``folder``, its sidecar (and ``before(target)``'s files) first.

    The source moves last: a crash in between leaves it in the inbox, where the restarted
    daemon finds it and finishes the move (its sidecar is already beside the target name).
    The other order would strand the sidecar in the inbox with nothing to take it along.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = fsutil.unique_path(folder / path.name)
    if before is not None:
        before(target)
    if sidecar is not None:
        _move_sidecar(sidecar, folder, target)
        failpoint("outcome.sidecar_moved")
    return move_file(path, folder, target.name)


def _move_sidecar(sidecar: Path, folder: Path, moved_source: Path) -> None:
    """The sidecar follows its input, named after the input's (possibly numbered) new name."""
    try:
        move_file(sidecar, folder, moved_source.name + sidecar.suffix)
    except OSError as exc:
        log.warning("could not move the sidecar %s: %s", sidecar, exc.strerror or exc)


# --------------------------------------------------------------------------- failures


def fail_source(path: Path, job: Job, reason: str, config: Config,
                settings: Mapping[str, Any], now: float) -> Path | None:
    """Move a failed job's source and sidecar to ``failed/<sub-folder>/`` and write
    ``<name>.error.txt`` beside it. Returns the moved source, or None when the source is gone
    or was replaced (then nothing is moved or written)."""
    why_not = source_changed(path, job.content_key)
    if why_not is not None:
        log.info("%s: source %s; nothing moved to failed/", job.source, why_not)
        return None
    folder = Path(config.daemon.failed).joinpath(*PurePosixPath(job.source).parent.parts)
    text = error_text(job, reason, config, settings, now)

    def write_report(target: Path) -> None:
        # Written first, so that whenever the source is in failed/ its reason is too.
        report = target.with_name(target.name + ERROR_SUFFIX)
        tmp = fsutil.temp_path_for(report)
        try:
            tmp.write_text(text, encoding="utf-8")
            fsutil.publish(tmp, report, overwrite=True)
        except (OSError, OutputError) as exc:
            fsutil.remove_quietly(tmp)
            log.warning("could not write %s: %s", report, exc)

    return _move_with_sidecar(path, sidecar_for(path), folder, write_report)


def error_text(job: Job, reason: str, config: Config, settings: Mapping[str, Any],
               now: float) -> str:
    """The human-readable ``<name>.error.txt``: reason, attempts, time, settings used."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now))
    used = {
        "style_name": job.style,
        "overrides": dict(settings),
        "style": _plain(config.style),
        "video": _plain(config.video),
        "model": {"pooling": config.model.pooling, "precision": config.model.precision},
    }
    return (
        f"nstd could not process {job.source}\n"
        f"reason: {reason}\n"
        f"attempts: {job.attempts}\n"
        f"failed at: {when}\n"
        f"job id: {job.id}\n"
        f"to try again: move it back into the inbox, or run `nstd retry {job.name}`\n"
        "settings used:\n"
        + _indent(yaml.safe_dump(used, sort_keys=False, default_flow_style=False))
    )


def _plain(section: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(section).items()}


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def find_failed_file(job: Job, failed: Path) -> Path | None:
    """Where a failed job's source lies in ``failed/`` (its name may have been numbered):
    the candidate whose content key is the job's, or None."""
    rel = PurePosixPath(job.source)
    folder = failed.joinpath(*rel.parent.parts)
    name = Path(rel.name)
    candidates = [folder / rel.name]
    try:
        candidates += sorted(p for p in folder.iterdir()
                             if p.name.startswith(f"{name.stem}-") and p.suffix == name.suffix)
    except OSError:
        pass
    for candidate in candidates:
        if source_changed(candidate, job.content_key) is None:
            return candidate
    return None


def clean_temp_files(folder: Path) -> int:
    """Remove our temp files (`fsutil.is_temp_path`) under ``folder`` left by a crash; returns
    how many. A temp file whose writer (the pid in its name) is another live process is left
    alone."""
    removed = 0
    if not folder.is_dir():
        return 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = Path(root) / name
            if fsutil.is_temp_path(path) and not _writer_alive(name):
                fsutil.remove_quietly(path)
                removed += 1
    return removed


def clean_temps_of(output: Path) -> int:
    """Remove the temp files a dead worker process left for ``output`` (its own temp name and
    the encoder's temp of that name, beside it); returns how many. Temp files of this process
    (a Ray driver's) and of live processes are left to their writers."""
    removed = 0
    try:
        names = os.listdir(output.parent)
    except OSError:
        return 0
    for name in names:
        path = output.parent / name
        if not (name.startswith(f".{output.name}.") or name.startswith(f"..{output.name}.")):
            continue
        if not fsutil.is_temp_path(path) or _pid_of(name) == os.getpid() or _writer_alive(name):
            continue
        fsutil.remove_quietly(path)
        removed += 1
    return removed


def _pid_of(temp_name: str) -> int | None:
    try:
        return int(temp_name.rsplit(".", 3)[-3])
    except (ValueError, IndexError):
        return None


def _writer_alive(temp_name: str) -> bool:
    try:
        pid = int(temp_name.rsplit(".", 3)[-3])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- a lost ledger


def rebuild_ledger(ledger: Ledger, config: Config, now: float) -> tuple[int, int]:
    """Rebuild what the folders tell about finished jobs into an empty ledger.

    After the ledger file was deleted (or moved aside because it was damaged):
    - every media file in ``done/`` becomes a ``done`` job (source = its path inside done/),
      with its output when ``outbox/<same sub-folder>/<stem>.<style>.<ext>`` exists;
    - every file in ``failed/`` with a ``<name>.error.txt`` becomes a ``failed`` job with the
      reason and attempts written there, so ``nstd status`` shows it and ``nstd retry``
      finds it.
    What cannot be rebuilt: queued and running jobs (their files are still in the inbox and
    are queued again by the start-up scan; a video's stored frames are not reused) and which
    inbox file an existing output came from. Returns (done, failed) counts.
    """
    d = config.daemon
    done = failed = 0
    for rel, path in _media_files(Path(d.done)):
        style = folder_style(rel) or d.default_style
        output = _guess_output(Path(d.outbox), rel, style)
        if _adopt(ledger, rel, path, style, "done", now, output=output):
            done += 1
    for rel, path in _media_files(Path(d.failed)):
        report = path.with_name(path.name + ERROR_SUFFIX)
        if not report.is_file():
            continue
        fields = _report_fields(report)
        style = fields.get("style_name") or folder_style(rel) or d.default_style
        try:
            attempts = int(fields.get("attempts", "1"))
        except ValueError:
            attempts = 1
        if _adopt(ledger, rel, path, style, "failed", now, attempts=attempts,
                  error=fields.get("reason") or "failed (reason lost with the ledger)"):
            failed += 1
    return done, failed


def _media_files(folder: Path) -> list[tuple[str, Path]]:
    from nstd.daemon.watch import is_candidate_name

    found = []
    if not folder.is_dir():
        return found
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            if is_candidate_name(path) and not path.is_symlink() and path.is_file():
                found.append((PurePosixPath(*path.relative_to(folder).parts).as_posix(), path))
    return found


def _guess_output(outbox: Path, rel: str, style: str) -> str | None:
    from nstd.media.images import IMAGE_EXTENSIONS

    kind = "image" if Path(rel).suffix.lower() in IMAGE_EXTENSIONS else "video"
    base = output_base(outbox, rel, style, kind)
    return str(base) if base.is_file() else None


def _report_fields(report: Path) -> dict[str, str]:
    """``reason``, ``attempts`` and ``style_name`` from an ``<name>.error.txt``."""
    fields: dict[str, str] = {}
    try:
        text = report.read_text(encoding="utf-8", errors="replace")[:64 * 1024]
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep and key in ("reason", "attempts", "style_name") and key not in fields:
            fields[key] = value.strip()
    return fields


def _adopt(ledger: Ledger, rel: str, path: Path, style: str, state: str, now: float,
           **extra: Any) -> bool:
    try:
        key = content_key(path)
    except (OSError, InputError):
        return False
    return ledger.adopt(rel, key, style, state, now, **extra) is not None  # type: ignore[arg-type]

"""Atomic, no-clobber file publication.

Every output nstd produces is written to a hidden temporary name in the *same folder* as the
final path and then published with one atomic step, so that:

- a failed or interrupted run leaves nothing at the final path (at most a hidden temp file,
  which `atomic_output` removes on any exception and `is_temp_path` lets a cleaner recognise);
- the rename never crosses filesystems (a cross-device "rename" is a copy + delete and is
  neither atomic nor safe against a crash half-way);
- an existing file is never overwritten unless asked: the no-clobber publish is
  `os.link(tmp, final)` (fails with EEXIST, atomically) followed by `os.unlink(tmp)`.

Disk-full errors (ENOSPC, EDQUOT) become `TransientError` (the daemon retries later);
permission and missing-folder errors become `OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nstd.errors import InputError, OutputError, TransientError
from nstd.faults import failpoint

log = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")

#: errno values that mean "the disk (or quota) is full": worth retrying once space returns.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
#: errno values that mean "the output location itself is unusable".
_BAD_PLACE = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}
#: errno values from os.link on filesystems without hard links (FAT, some FUSE/SMB mounts).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def temp_path_for(final: str | os.PathLike[str]) -> Path:
    """A hidden, unique temporary path next to `final` (same folder, so same filesystem).

    The name is `.<final name>.<pid>.<8 hex>.tmp`; `is_temp_path` recognises it.
    """
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temp_path(path: str | os.PathLike[str]) -> bool:
    """True if `path`'s name has the shape `temp_path_for` gives (a leftover of a crash)."""
    return bool(_TEMP_RE.match(Path(path).name))


def final_path_for_temp(path: str | os.PathLike[str]) -> Path | None:
    """The final path a `temp_path_for` name stands for, or None if `path` is not one."""
    path = Path(path)
    if not is_temp_path(path):
        return None
    name = path.name[1:].rsplit(".", 3)[0]  # drop the leading dot and .<pid>.<hex>.tmp
    return path.with_name(name)


def unique_path(path: str | os.PathLike[str], *, limit: int = 10_000) -> Path:
    """`path` if nothing is there, else `stem-1.ext`, `stem-2.ext`, ... the first that is free.

    "Free" includes dangling symlinks being counted as taken. Only a hint: another process may
    take the name before it is used, which the no-clobber `publish` then reports.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return path
    for n in range(1, limit + 1):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise OutputError(f"no free name like {path} (tried {limit} numbered variants)")


def os_error_to_nstd(
    exc: OSError, path: str | os.PathLike[str], action: str = "write"
) -> Exception:
    """Map an OSError raised while writing `path` to the nstd error a user or the daemon acts on.

    Returns (does not raise) `TransientError` for a full disk or quota, `OutputError` for an
    unusable location, and the original exception otherwise.
    """
    if exc.errno in _NO_SPACE:
        return TransientError(
            f"no space left on the device while trying to {action} {path}; free some space"
            " and retry"
        )
    if exc.errno in _BAD_PLACE:
        reason = exc.strerror or str(exc)
        return OutputError(f"cannot {action} {path}: {reason}")
    return exc


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush `path`'s data to stable storage (so a crash after publish cannot leave it empty)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (a rename/link) to stable storage; best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some filesystems (and all of Windows) refuse fsync on directories: nothing to do.
        pass
    finally:
        os.close(fd)


def publish(
    tmp: str | os.PathLike[str], final: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Atomically move the finished file `tmp` to `final` and make it durable; returns `final`.

    `tmp` must be in the same folder as `final` (use `temp_path_for`). Without `overwrite`
    an existing `final` is never replaced: `OutputError` is raised and `tmp` is left in place
    for the caller to remove. With `overwrite`, `os.replace` swaps it in atomically.
    """
    tmp, final = Path(tmp), Path(final)
    if tmp.parent.resolve() != final.parent.resolve():
        raise ValueError(f"publish: {tmp} and {final} must be in the same folder")
    try:
        fsync_file(tmp)
        failpoint("publish.before_rename")  # fault-injection tests only
        if overwrite:
            os.replace(tmp, final)
        else:
            _publish_no_clobber(tmp, final)
    except FileExistsError:
        raise OutputError(
            f"{final} already exists; choose another output name or allow overwriting"
        ) from None
    except OSError as exc:
        raise os_error_to_nstd(exc, final, "publish") from exc
    fsync_dir(final.parent)
    return final


def _publish_no_clobber(tmp: Path, final: Path) -> None:
    try:
        # link() fails atomically with EEXIST if `final` exists: no window where it is clobbered.
        os.link(tmp, final, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links here: reserve the name exclusively, then replace the placeholder.
        # Not atomic for readers (an empty file exists briefly) but still never clobbers.
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.replace(tmp, final)
        return
    failpoint("publish.after_link")  # fault-injection tests only
    os.unlink(tmp)


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file if it exists; never raises (used on error paths)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove temporary file %s: %s", path, exc)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path next to `final`; publish it to `final` when the block succeeds.

    On any exception the temp file is removed and nothing appears at `final`; ENOSPC/EDQUOT
    raised inside the block become `TransientError`. An existing `final` (without
    `overwrite`) is refused up front, before any work, and again atomically at publish time.
    The block must create the temp file (a missing one is an `OutputError`).

    Example::

        with atomic_output(out) as tmp:
            tmp.write_bytes(data)
    """
    final = Path(final)
    if not overwrite and os.path.lexists(final):
        raise OutputError(
            f"{final} already exists; choose another output name or allow overwriting"
        )
    if not final.parent.is_dir():
        raise OutputError(f"cannot write {final}: the folder {final.parent} does not exist")
    tmp = temp_path_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written for {final}")
        publish(tmp, final, overwrite=overwrite)
    except OSError as exc:
        remove_quietly(tmp)
        # Map only what is about the output: a full disk, or the temp/final path itself being
        # unwritable. Other OSErrors (e.g. reading an input inside the block) pass unchanged.
        about_output = exc.errno in _NO_SPACE or (
            exc.errno in _BAD_PLACE and exc.filename in (str(tmp), str(final))
        )
        mapped = os_error_to_nstd(exc, final) if about_output else exc
        if mapped is exc:
            raise
        raise mapped from exc
    except BaseException:
        remove_quietly(tmp)
        raise


def open_regular(path: str | os.PathLike[str], label: str | None = None) -> BinaryIO:
    """Open a regular file for reading, never through a symbolic link and never blocking (a
    FIFO cannot hang the caller). The one way inbox files are opened.

    Raises OSError when it cannot be opened (errno ``ELOOP``: ``path`` is a symbolic link),
    InputError ("<label> is not a regular file"; ``label`` defaults to the path) for a FIFO,
    device or folder.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise InputError(f"{label or path} is not a regular file")
    return handle


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a whole file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""What makes an inbox file the same file: its content key."""

from __future__ import annotations

import errno
import hashlib
import os

from nstd.errors import InputError
from nstd.media.files import open_regular

HASH_CHUNK = 64 * 1024


def content_key(path: str | os.PathLike[str]) -> str:
    """``"<size>:<mtime_ns>:<sha256 of the first and last 64 KiB>"`` of a regular file.

    Cheap for large videos, yet changes when a file is replaced or rewritten. The file is
    opened without following symlinks and without blocking (a FIFO never hangs us), and must
    be a regular file. Raises `InputError` for anything else; `OSError` (e.g.
    ``FileNotFoundError``) when it cannot be opened or read: the caller decides whether that
    is transient.
    """
    try:
        f = open_regular(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{path} is a symbolic link; put the file itself in the inbox") from exc
        raise
    with f:
        st = os.fstat(f.fileno())
        digest = hashlib.sha256()
        digest.update(f.read(HASH_CHUNK))
        if st.st_size > HASH_CHUNK:
            f.seek(max(HASH_CHUNK, st.st_size - HASH_CHUNK))
            digest.update(f.read(HASH_CHUNK))
    return f"{st.st_size}:{st.st_mtime_ns}:{digest.hexdigest()}"

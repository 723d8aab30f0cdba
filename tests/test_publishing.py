"""Atomic, no-clobber publication of outputs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nstd.errors import OutputError, TransientError
from nstd.media import files as fsutil


def test_temp_path_is_hidden_in_the_same_folder(tmp_path: Path) -> None:
    final = tmp_path / "out.mp4"
    tmp = fsutil.temp_path_for(final)
    assert tmp.parent == final.parent
    assert tmp.name.startswith(".out.mp4.") and tmp.name.endswith(".tmp")
    assert fsutil.is_temp_path(tmp)
    assert not fsutil.is_temp_path(final)
    assert fsutil.final_path_for_temp(tmp) == final
    assert fsutil.final_path_for_temp(final) is None
    assert fsutil.temp_path_for(final) != tmp  # unique per call


def test_publish_moves_and_never_clobbers(tmp_path: Path) -> None:
    final = tmp_path / "a.png"
    tmp = fsutil.temp_path_for(final)
    tmp.write_bytes(b"one")
    assert fsutil.publish(tmp, final) == final
    assert final.read_bytes() == b"one" and not tmp.exists()

    tmp2 = fsutil.temp_path_for(final)
    tmp2.write_bytes(b"two")
    with pytest.raises(OutputError, match="already exists"):
        fsutil.publish(tmp2, final)
    assert final.read_bytes() == b"one"  # untouched
    assert tmp2.exists()  # the caller decides what to do with it

    fsutil.publish(tmp2, final, overwrite=True)
    assert final.read_bytes() == b"two" and not tmp2.exists()


def test_publish_without_hard_links_still_refuses_to_clobber(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fsutil.os, "link", no_link)
    final = tmp_path / "b.txt"
    tmp = fsutil.temp_path_for(final)
    tmp.write_bytes(b"x")
    fsutil.publish(tmp, final)
    assert final.read_bytes() == b"x" and not tmp.exists()
    tmp = fsutil.temp_path_for(final)
    tmp.write_bytes(b"y")
    with pytest.raises(OutputError):
        fsutil.publish(tmp, final)
    assert final.read_bytes() == b"x"


def test_publish_refuses_other_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    tmp = tmp_path / "sub" / "t"
    tmp.write_bytes(b"")
    with pytest.raises(ValueError):
        fsutil.publish(tmp, tmp_path / "final")


def test_unique_path(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    assert fsutil.unique_path(path) == path
    path.write_bytes(b"")
    assert fsutil.unique_path(path) == tmp_path / "x-1.png"
    (tmp_path / "x-1.png").write_bytes(b"")
    os.symlink(tmp_path / "missing", tmp_path / "x-2.png")  # dangling link: taken
    assert fsutil.unique_path(path) == tmp_path / "x-3.png"


def test_atomic_output_publishes_on_success(tmp_path: Path) -> None:
    final = tmp_path / "ok.bin"
    with fsutil.atomic_output(final) as tmp:
        assert not final.exists()
        tmp.write_bytes(b"data")
    assert final.read_bytes() == b"data"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "bad.bin"
    with pytest.raises(RuntimeError):
        with fsutil.atomic_output(final) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_disk_full_is_transient(tmp_path: Path) -> None:
    final = tmp_path / "full.bin"
    with pytest.raises(TransientError, match="no space left"):
        with fsutil.atomic_output(final) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_existing_before_work(tmp_path: Path) -> None:
    final = tmp_path / "exists.bin"
    final.write_bytes(b"keep")
    ran = []
    with pytest.raises(OutputError, match="already exists"):
        with fsutil.atomic_output(final):
            ran.append(True)
    assert not ran and final.read_bytes() == b"keep"
    with fsutil.atomic_output(final, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"


def test_atomic_output_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        with fsutil.atomic_output(tmp_path / "nope" / "x.bin"):
            pass


def test_os_error_mapping(tmp_path: Path) -> None:
    full = fsutil.os_error_to_nstd(OSError(errno.ENOSPC, "full"), tmp_path / "x")
    assert isinstance(full, TransientError)
    denied = fsutil.os_error_to_nstd(OSError(errno.EACCES, "Permission denied"), tmp_path)
    assert isinstance(denied, OutputError) and "Permission denied" in str(denied)
    other = OSError(errno.EIO, "I/O error")
    assert fsutil.os_error_to_nstd(other, tmp_path) is other


def test_a_dead_workers_temp_files_for_an_output_are_removed_and_no_others(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from nstd.daemon.outcome import clean_temps_of

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(gone.stdout)  # a process that has ended
    output = tmp_path / "v.mosaic.mp4"
    dead_temp = tmp_path / f".v.mosaic.mp4.{dead}.0a1b2c3d.tmp"
    dead_encoder_temp = tmp_path / f"..v.mosaic.mp4.{dead}.0a1b2c3d.tmp.{dead}.11223344.tmp"
    ours = tmp_path / f".v.mosaic.mp4.{os.getpid()}.55667788.tmp"  # this process writes it
    other_job = tmp_path / f".w.mosaic.mp4.{dead}.99aabbcc.tmp"  # another output's
    for path in (dead_temp, dead_encoder_temp, ours, other_job):
        path.write_bytes(b"partial")
    assert clean_temps_of(output) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, other_job.name])

"""A daemon on temp folders, run as a real `nstd run` subprocess: for tests and benchmarks.

    site = Site.create(tmp_path, weights)              # styles/, config.yaml, data/...
    daemon = site.start("first", failpoints="publish.before_rename=kill")
    daemon.wait_log("ready: watching")
    ...
    assert daemon.wait_exit() == -9

Tiny, fast settings (style.max_side 32, 2 iterations, settle 0.2 s) unless overridden.
`nstd.testing.stepped` is the in-process counterpart: a supervisor stepped on a fake clock.
Subprocesses get OMP_NUM_THREADS=1: on 2 shared cores, torch's OpenMP threads competing with
another process (or the daemon's decode/flow/encode threads) slow an iteration down 100-fold.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nstd.media import files as fsutil
from nstd.testing.media import write_test_image

DEFAULTS: dict[str, Any] = {
    "model": {"device": "cpu"},
    "style": {"max_side": 32, "iterations": 2, "coarse_iterations": 1, "min_scale_side": 16},
    "video": {"frame_iterations": 1, "preset": "ultrafast"},
    # http: null: concurrent test daemons must not compete for the shipped port 8765.
    "daemon": {"settle_seconds": 0.2, "rescan_seconds": 30.0, "retry_backoff_seconds": 0.3,
               "max_attempts": 5, "http": None},
}
FOLDERS = ("inbox", "outbox", "work", "failed", "done", "state")
_STARTED: list[DaemonProcess] = []


def kill_all() -> None:
    """Kill every daemon this process started that is still running (test teardown: a
    failed test must not leave a daemon behind watching a folder that gets reused)."""
    while _STARTED:
        _STARTED.pop().kill()


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of config mappings (``extra`` wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def environment(failpoints: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NSTD_FAILPOINTS", "NOTIFY_SOCKET")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    if failpoints:
        env["NSTD_FAILPOINTS"] = failpoints
    return env


class Site:
    """Folders, a style image and a config.yaml under ``root`` (data in ``root/data``)."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config = config
        self.config_path = root / "config.yaml"
        for key in FOLDERS:
            setattr(self, key, root / "data" / key)

    inbox: Path
    outbox: Path
    work: Path
    failed: Path
    done: Path
    state: Path

    @classmethod
    def create(cls, root: Path, weights: Path, **sections: Any) -> Site:
        """Write ``root/styles/{mosaic,other}.png`` and ``root/config.yaml`` (the defaults
        above merged with ``sections``, e.g. ``limits={"max_pixels": 10**5}``)."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "styles").mkdir(exist_ok=True)
        write_test_image(root / "styles" / "mosaic.png", size=(32, 32), seed=101)
        write_test_image(root / "styles" / "other.png", size=(32, 32), seed=102)
        config = merge(DEFAULTS, {"model": {"weights": str(weights)}})
        config = merge(config, sections)
        site = cls(root, config)
        site.write_config()
        return site

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))  # JSON is YAML

    def start(self, name: str, *, failpoints: str | None = None,
              wait_ready: bool = True, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(self, name, environment(failpoints, **env))
        if wait_ready:
            daemon.wait_log("ready: watching")
        return daemon

    def nstd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run another `nstd` command on this site (status, retry...)."""
        return subprocess.run([sys.executable, "-m", "nstd", *args, "--config",
                               str(self.config_path)], cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, env=environment())

    def jobs(self) -> list[dict[str, Any]]:
        """Every ledger row (read-only; works while the daemon runs)."""
        import sqlite3

        path = self.state / "jobs.sqlite3"
        if not path.exists():
            return []
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
        finally:
            db.close()


class DaemonProcess:
    """One `nstd run` process; its stderr goes to ``<root>/<name>.log``."""

    def __init__(self, site: Site, name: str, env: dict[str, str]) -> None:
        self.site = site
        self.log_path = site.root / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait_exit()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nstd", "run", "--config", str(site.config_path)],
            cwd=site.root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log, env=env)
        _STARTED.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, condition: Callable[[], Any], timeout: float = 60.0, what: str = "",
                 *, may_exit: bool = False, interval: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if not may_exit and self.proc.poll() is not None:
                raise AssertionError(f"nstd run exited ({self.proc.returncode}) while "
                                     f"waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")
            time.sleep(interval)

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        self.wait_for(lambda: text in self.log(), timeout, repr(text))

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"nstd run did not exit within {timeout} s:\n"
                                 f"{self.tail()}") from None
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._log.close()
        if self in _STARTED:
            _STARTED.remove(self)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # ----------------------------------------------------------------- /proc figures

    def _status(self, key: str) -> int | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) if match else None

    def rss_kb(self) -> int | None:
        """Resident memory now (VmRSS), KiB."""
        return self._status("VmRSS")

    def peak_rss_kb(self) -> int | None:
        """Peak resident memory so far (VmHWM), KiB."""
        return self._status("VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sockets(self) -> list[str]:
        """The process's open sockets (``socket:[inode]``); a daemon that listens has one."""
        found = []
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:"):
                found.append(target)
        return found


# --------------------------------------------------------------------------- folder checks


def _entries(root: Path) -> list[Path]:
    """Everything below ``root`` (symlinks not followed), read while a daemon may be removing
    folders: ``Path.rglob`` raises FileNotFoundError when a sub-folder it is about to list
    is removed meanwhile (a job's work folder at its end); ``os.walk`` skips it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found.extend(Path(dirpath, name) for name in (*dirnames, *filenames))
    return found


def listing(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones, i.e. temp files, included), sorted."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in _entries(folder)
                  if p.is_file() or p.is_symlink() or p.is_fifo())


def sha256(path: Path) -> str:
    return fsutil.sha256_file(path)


def checksums(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the regular files below ``folder``."""
    return {rel: sha256(folder / rel) for rel in listing(folder)
            if (folder / rel).is_file() and not (folder / rel).is_symlink()}


def temp_files(root: Path, *, outside: Path | None = None) -> list[str]:
    """Our temp files (`nstd.media.files.is_temp_path`) below ``root``, except under ``outside``."""
    from nstd.media.files import is_temp_path

    found = []
    for path in _entries(root):
        if outside is not None and (path == outside or outside in path.parents):
            continue
        if is_temp_path(path):
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def log_time(line: str) -> float:
    """Epoch seconds of a log line from `nstd run` (``2026-01-02 03:04:05,678 ...``)."""
    from datetime import datetime

    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

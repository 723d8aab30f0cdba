"""`nstd run` in a subprocess on temp folders, with the slim random VGG and tiny sizes.

Covers what only a real process shows: inotify events from real writes, a file written slowly
in pieces, a `.part` renamed in, a sidecar, `status --json` while it runs, a second daemon
refused, kill -9 in the middle of a video and the restart that resumes it, SIGTERM (exit 0,
the job back in the queue), and the refusals to start (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from nstd.testing.media import write_test_clip, write_test_image

REPO = Path(__file__).resolve().parent.parent
FRAMES = 24
# One torch thread: on 2 shared cores, two OpenMP threads competing with another process (or
# with the daemon's own decode/flow/encode threads) slow an iteration down by 100x or more.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def nstd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nstd", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=ENV)


def write_config(root: Path, weights: Path, **daemon: object) -> Path:
    config = {
        "model": {"weights": str(weights), "device": "cpu"},
        "style": {"max_side": 32, "iterations": 4, "coarse_iterations": 2,
                  "min_scale_side": 16},
        "video": {"frame_iterations": 3, "preset": "ultrafast"},
        "daemon": {"settle_seconds": 0.3, "rescan_seconds": 30.0,
                   "retry_backoff_seconds": 1.0, **daemon},
    }
    path = root / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture()
def site(tmp_path: Path, vgg_weights_path: Path) -> Path:
    styles = tmp_path / "styles"
    styles.mkdir()
    shutil.copy(REPO / "styles" / "mosaic.png", styles / "mosaic.png")
    write_test_image(styles / "other.png", size=(32, 32), seed=5)
    write_config(tmp_path, vgg_weights_path)
    return tmp_path


class Daemon:
    """One `nstd run` process; its stderr goes to a file the test reads."""

    def __init__(self, root: Path, name: str) -> None:
        self.log_path = root / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nstd", "run", "--config", str(root / "config.yaml")],
            cwd=root, stdout=subprocess.DEVNULL, stderr=self._log, env=ENV)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], object], timeout: float = 60.0,
                 what: str = "") -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(f"nstd run exited ({self.proc.returncode}) while waiting "
                                     f"for {what}:\n{self.log()}")
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        self.wait_for(lambda: text in self.log(), timeout, repr(text))

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@pytest.fixture()
def daemons(site: Path) -> Iterator[Callable[[str], Daemon]]:
    started: list[Daemon] = []

    def start(name: str) -> Daemon:
        daemon = Daemon(site, name)
        started.append(daemon)
        daemon.wait_log("ready: watching")
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def listing(folder: Path) -> list[str]:
    """Every file below `folder`, hidden ones (temp files) included."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def status(site: Path) -> dict:
    result = nstd("status", "--json", "--config", "config.yaml", cwd=site)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_images_arrive_every_way_and_sigterm_exits_0(site: Path, daemons) -> None:
    daemon = daemons("run")
    inbox, outbox = site / "data" / "inbox", site / "data" / "outbox"

    second = nstd("run", "--config", "config.yaml", cwd=site)
    assert second.returncode == 2
    assert "another nstd daemon" in second.stderr and len(second.stderr.splitlines()) == 1

    # An image at the root, copied in one go.
    write_test_image(site / "photo.png", size=(48, 32), seed=1)
    shutil.copy(site / "photo.png", inbox / "photo.png")

    # An image written slowly in pieces, each gap shorter than settle_seconds.
    write_test_image(site / "slow.png", size=(64, 48), seed=2)
    data = (site / "slow.png").read_bytes()
    with open(inbox / "slow.png", "wb") as handle:
        for i in range(6):
            handle.write(data[i * len(data) // 6:(i + 1) * len(data) // 6])
            handle.flush()
            time.sleep(0.1)

    # A download that arrives as .part and is renamed when complete.
    write_test_image(site / "download.png", size=(40, 40), seed=3)
    shutil.copy(site / "download.png", inbox / "download.png.part")
    time.sleep(0.6)  # twice the settle time: a .part file is never taken
    assert "download" not in daemon.log()
    os.rename(inbox / "download.png.part", inbox / "download.png")

    # A sidecar choosing another style and overriding a setting (written before its input).
    (inbox / "side.png.yaml").write_text("style_name: other\nstyle:\n  iterations: 2\n")
    write_test_image(inbox / "side.png", size=(32, 32), seed=4)

    expected = ["download.mosaic.png", "photo.mosaic.png", "side.other.png", "slow.mosaic.png"]
    daemon.wait_for(lambda: listing(outbox) == expected and not listing(inbox), 90,
                    "four outputs")
    data = status(site)
    assert data["daemon"]["running"] and data["daemon"]["pid"] == daemon.proc.pid
    assert data["counts"] == {"queued": 0, "running": 0, "done": 4, "failed": 0}
    jobs = {j["source"]: j for j in data["recent"]}
    assert jobs["side.png"]["style"] == "other"
    assert jobs["side.png"]["settings"] == {"style": {"iterations": 2}}
    slow_size = len((site / "slow.png").read_bytes())
    assert (site / "data" / "done" / "slow.png").stat().st_size == slow_size
    assert listing(site / "data" / "done") == ["download.png", "photo.png", "side.png",
                                               "side.png.yaml", "slow.png"]
    log = daemon.log()
    assert "queued slow.png" in log and log.count("started slow.png") == 1
    assert "\r" not in log  # no progress bars in a log

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert "stopped" in daemon.log()


def stored_frames(site: Path) -> int:
    return len(list((site / "data" / "work").glob("*/store/frames/*.json")))


def test_video_survives_kill_9_and_sigterm_and_finishes_once(site: Path, daemons) -> None:
    inbox = site / "data" / "inbox"
    (inbox / "mosaic").mkdir(parents=True)
    # Slower frames than the config's, so that the kills land in the middle of the video.
    (inbox / "mosaic" / "clip.mp4.yaml").write_text("video:\n  frame_iterations: 12\n")
    write_test_clip(site / "clip.mp4", frames=FRAMES, size=(64, 48), rate=Fraction(24))
    shutil.copy(site / "clip.mp4", inbox / "mosaic" / ".clip.mp4.copying")
    os.rename(inbox / "mosaic" / ".clip.mp4.copying", inbox / "mosaic" / "clip.mp4")

    first = daemons("first")
    first.wait_for(lambda: stored_frames(site) >= 2, 90, "two stored frames")
    first.kill()  # SIGKILL: no clean-up at all
    killed_at = stored_frames(site)
    assert killed_at < FRAMES, "the video finished before it could be killed"

    second = daemons("second")
    second.wait_log("resuming,")
    assert f"resuming, {killed_at} of {FRAMES} frames already stored" in second.log()
    second.wait_for(lambda: stored_frames(site) > killed_at, 90, "one more frame")
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert "back in the queue" in second.log()
    job = status(site)["queued"][0]
    assert job["source"] == "mosaic/clip.mp4" and job["attempts"] == 1  # SIGTERM: no penalty
    stopped_at = stored_frames(site)

    third = daemons("third")
    third.wait_log("done mosaic/clip.mp4", 120)
    assert f"resuming, {stopped_at} of {FRAMES} frames already stored" in third.log()
    assert f"{FRAMES} frames, {stopped_at} resumed" in third.log()
    third.wait_log("source moved to")
    outbox = site / "data" / "outbox"
    assert listing(outbox) == ["mosaic/clip.mosaic.mp4"]  # exactly one, no temp files left

    from nstd.media.container import count_frames

    assert count_frames(outbox / "mosaic" / "clip.mosaic.mp4") == FRAMES
    assert listing(site / "data" / "done") == ["mosaic/clip.mp4", "mosaic/clip.mp4.yaml"]
    assert listing(site / "data" / "work") == []
    assert status(site)["counts"]["done"] == 1
    third.proc.send_signal(signal.SIGTERM)
    assert third.wait(15) == 0


@pytest.mark.parametrize(("daemon", "model", "message"), [
    ({"outbox": "data/inbox/results"}, {}, "daemon.outbox"),
    ({"default_style": "nosuch"}, {}, "daemon.default_style: no style image named 'nosuch'"),
    ({}, {"weights": "missing.pth"}, "model.weights: weights file"),
])
def test_refuses_to_start_with_exit_2(site: Path, vgg_weights_path: Path, daemon: dict,
                                      model: dict, message: str) -> None:
    config = write_config(site, vgg_weights_path, **daemon)
    if model:
        data = json.loads(config.read_text())
        data["model"].update(model)
        config.write_text(json.dumps(data))
    result = nstd("run", "--config", "config.yaml", cwd=site)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert all(line.startswith("nstd: config error:") for line in result.stderr.splitlines())

"""`nstd run` in a subprocess on temp folders (`nstd.testing.site`), with the slim random VGG
and tiny sizes.

Covers what only a real process shows: inotify events from real writes, a file written slowly
in pieces, a `.part` renamed in, a sidecar, `status --json` while it runs, a second daemon
refused, kill -9 in the middle of a video and the restart that resumes it, SIGTERM (exit 0,
the job back in the queue), and the refusals to start (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from nstd.testing.media import write_test_clip, write_test_image
from nstd.testing.site import Site, kill_all, listing, merge

FRAMES = 24
# A little more work per image and frame than the harness's defaults: the kills below must
# land in the middle of a video.
SETTINGS = {"style": {"iterations": 4, "coarse_iterations": 2},
            "video": {"frame_iterations": 3},
            "daemon": {"settle_seconds": 0.3, "retry_backoff_seconds": 1.0}}


@pytest.fixture()
def site(tmp_path: Path, vgg_weights_path: Path) -> Iterator[Site]:
    yield Site.create(tmp_path, vgg_weights_path, **SETTINGS)
    kill_all()  # a failed test leaves no daemon behind


def status(site: Site) -> dict:
    result = site.nstd("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_images_arrive_every_way_and_sigterm_exits_0(site: Site) -> None:
    daemon = site.start("run")
    inbox, outbox = site.inbox, site.outbox

    second = site.nstd("run")
    assert second.returncode == 2
    assert "another nstd daemon" in second.stderr and len(second.stderr.splitlines()) == 1

    # An image at the root, copied in one go.
    write_test_image(site.root / "photo.png", size=(48, 32), seed=1)
    shutil.copy(site.root / "photo.png", inbox / "photo.png")

    # An image written slowly in pieces, each gap shorter than settle_seconds.
    write_test_image(site.root / "slow.png", size=(64, 48), seed=2)
    data = (site.root / "slow.png").read_bytes()
    with open(inbox / "slow.png", "wb") as handle:
        for i in range(6):
            handle.write(data[i * len(data) // 6:(i + 1) * len(data) // 6])
            handle.flush()
            time.sleep(0.1)

    # A download that arrives as .part and is renamed when complete.
    write_test_image(site.root / "download.png", size=(40, 40), seed=3)
    shutil.copy(site.root / "download.png", inbox / "download.png.part")
    time.sleep(0.6)  # twice the settle time: a .part file is never taken
    assert not [j for j in site.jobs() if j["source"].startswith("download")]
    os.rename(inbox / "download.png.part", inbox / "download.png")

    # A sidecar choosing another style and overriding a setting (written before its input).
    (inbox / "side.png.yaml").write_text("style_name: other\nstyle:\n  iterations: 2\n")
    write_test_image(inbox / "side.png", size=(32, 32), seed=4)

    expected = ["download.mosaic.png", "photo.mosaic.png", "side.other.png", "slow.mosaic.png"]
    daemon.wait_for(lambda: listing(outbox) == expected and not listing(inbox), 90,
                    "four outputs")
    data = status(site)
    assert data["daemon"]["running"] and data["daemon"]["pid"] == daemon.pid
    assert data["counts"] == {"queued": 0, "running": 0, "done": 4, "failed": 0}
    jobs = {j["source"]: j for j in data["recent"]}
    assert jobs["side.png"]["style"] == "other"
    assert jobs["side.png"]["settings"] == {"style": {"iterations": 2}}
    slow_size = len((site.root / "slow.png").read_bytes())
    assert (site.done / "slow.png").stat().st_size == slow_size
    assert listing(site.done) == ["download.png", "photo.png", "side.png", "side.png.yaml",
                                  "slow.png"]
    # One job for the slow file, started once: never taken while it was still growing.
    assert [j["attempts"] for j in site.jobs() if j["source"] == "slow.png"] == [1]
    assert "\r" not in daemon.log()  # no progress bars in a log

    assert daemon.stop(15) == 0
    assert "stopped" in daemon.log()


def stored_frames(site: Site) -> int:
    return len(list(site.work.glob("*/store/frames/*.json")))


def test_video_survives_kill_9_and_sigterm_and_finishes_once(site: Site) -> None:
    inbox = site.inbox
    (inbox / "mosaic").mkdir(parents=True)
    # Slower frames than the config's, so that the kills land in the middle of the video.
    (inbox / "mosaic" / "clip.mp4.yaml").write_text("video:\n  frame_iterations: 12\n")
    write_test_clip(site.root / "clip.mp4", frames=FRAMES, size=(64, 48), rate=Fraction(24))
    shutil.copy(site.root / "clip.mp4", inbox / "mosaic" / ".clip.mp4.copying")
    os.rename(inbox / "mosaic" / ".clip.mp4.copying", inbox / "mosaic" / "clip.mp4")

    first = site.start("first")
    first.wait_for(lambda: stored_frames(site) >= 2, 90, "two stored frames")
    first.kill()  # SIGKILL: no clean-up at all
    killed_at = stored_frames(site)
    assert killed_at < FRAMES, "the video finished before it could be killed"

    second = site.start("second")
    second.wait_log("resuming,")
    assert f"resuming, {killed_at} of {FRAMES} frames already stored" in second.log()
    second.wait_for(lambda: stored_frames(site) > killed_at, 90, "one more frame")
    assert second.stop(20) == 0
    job = status(site)["queued"][0]
    assert job["source"] == "mosaic/clip.mp4" and job["attempts"] == 1  # SIGTERM: no penalty
    stopped_at = stored_frames(site)

    third = site.start("third")
    third.wait_for(lambda: listing(site.done) == ["mosaic/clip.mp4", "mosaic/clip.mp4.yaml"],
                   120, "the video done and its source moved")
    assert f"resuming, {stopped_at} of {FRAMES} frames already stored" in third.log()
    assert f"{FRAMES} frames, {stopped_at} resumed" in third.log()
    outbox = site.outbox
    assert listing(outbox) == ["mosaic/clip.mosaic.mp4"]  # exactly one, no temp files left

    from nstd.media.container import count_frames

    assert count_frames(outbox / "mosaic" / "clip.mosaic.mp4") == FRAMES
    assert listing(site.done) == ["mosaic/clip.mp4", "mosaic/clip.mp4.yaml"]
    assert listing(site.work) == []
    assert status(site)["counts"]["done"] == 1
    assert third.stop(15) == 0


@pytest.mark.parametrize(("daemon", "model", "message"), [
    ({"outbox": "data/inbox/results"}, {}, "daemon.outbox"),
    ({"default_style": "nosuch"}, {}, "daemon.default_style: no style image named 'nosuch'"),
    ({}, {"weights": "missing.pth"}, "model.weights: weights file"),
])
def test_refuses_to_start_with_exit_2(site: Site, daemon: dict, model: dict,
                                      message: str) -> None:
    site.config = merge(site.config, {"daemon": daemon, "model": model})
    site.write_config()
    result = site.nstd("run", timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert all(line.startswith("nstd: config error:") for line in result.stderr.splitlines())

"""A copy that pauses is not a broken file (issue 9, point 6), end to end with `nstd run`.

A video copied in two halves with a pause of 3 x ``settle_seconds`` in between (Wi-Fi and
network copies stall like this) must give one correct output and nothing in failed/. On
inotify the daemon knows the file is still open for writing (modified, no closed-write since:
`nstd.daemon.watch.OpenWrites`), so the pause is not mistaken for stability.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from nstd.testing.media import write_test_clip, write_test_image
from nstd.testing.site import Site, checksums, kill_all, listing

SETTLE = 0.5


@pytest.fixture(autouse=True)
def _no_daemon_left() -> Iterator[None]:
    yield
    kill_all()


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def test_a_copy_that_stalls_half_way_gives_one_output_and_nothing_failed(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"settle_seconds": SETTLE})
    source = write_test_clip(tmp_path / "clip.mp4", frames=6, size=(32, 24), rate=Fraction(6))
    data = source.read_bytes()
    daemon = site.start("run")
    # First a warm-up image, so that the daemon is idle with its network loaded: a job
    # queued during the stall would start at once (and find half a file).
    write_test_image(site.inbox / "warm.png", size=(24, 16), seed=1)
    daemon.wait_for(lambda: listing(site.done) == ["warm.png"], 60, "the warm-up image")
    target = site.inbox / "clip.mp4"
    with target.open("wb") as f:  # a copy, as cp or a file manager writes it
        f.write(data[:len(data) // 2])
        f.flush()
        daemon.wait_log("noticed clip.mp4")
        # The stall is the scenario itself: the daemon sees no change for 3 x settle_seconds.
        time.sleep(3 * SETTLE)
        f.write(data[len(data) // 2:])
    daemon.wait_for(lambda: "clip.mp4" in listing(site.done) or listing(site.failed), 60,
                    "the job to end")
    assert listing(site.failed) == [], daemon.tail()
    outputs = [o for o in listing(site.outbox) if o.startswith("clip.")]
    assert len(outputs) == 1, listing(site.outbox)
    assert frame_count(site.outbox / outputs[0]) == frame_count(source) == 6
    assert checksums(site.done)["clip.mp4"] == hashlib.sha256(data).hexdigest()
    # Taken once, after the copy closed it: never queued while the copy was stalled.
    assert daemon.log().count("queued clip.mp4") == 1, daemon.tail()
    jobs = [j for j in site.jobs() if j["source"] == "clip.mp4"]
    assert [(j["state"], j["attempts"]) for j in jobs] == [("done", 1)]
    assert daemon.stop() == 0

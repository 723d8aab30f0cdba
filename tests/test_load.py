"""Load, CI-sized: many small images and a few videos dropped at once into `nstd run`.

Every file is processed exactly once (one ledger row each, all done, one output each, no
`-1` duplicates, sources byte-identical in done/) and every drop is noticed from its own
inotify event, not by the safety-net rescan. Latency and memory are measurements, not
properties of 62 tiny files on a shared machine: `bench/soak.py` runs the full-size version
(300 images, videos, a video of thousands of frames) and reports notice latency and RSS; this
test prints its own figures (pytest -s).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from nstd.testing.media import write_test_clip, write_test_image
from nstd.testing.site import Site, checksums, kill_all, listing, log_time, temp_files

IMAGES = 60
VIDEOS = 2


@pytest.fixture(autouse=True)
def _no_daemon_left() -> Iterator[None]:
    yield
    kill_all()


def test_many_files_at_once_are_each_processed_exactly_once(
        tmp_path: Path, vgg_weights_path: Path) -> None:
    site = Site.create(tmp_path, vgg_weights_path, style={"iterations": 1})
    stage = tmp_path / "stage"
    (stage / "other").mkdir(parents=True)
    for i in range(IMAGES):
        write_test_image(stage / f"img{i:03d}.png", size=(16 + i % 9, 16 + i % 5), seed=i)
    for i in range(VIDEOS):
        write_test_clip(stage / "other" / f"clip{i}.mp4", frames=8, size=(32, 24),
                        rate=Fraction(12), seed=i)
    sources = checksums(stage)
    assert site.config["daemon"]["rescan_seconds"] >= 30  # a rescan cannot explain a notice
    daemon = site.start("run")
    idle_rss = daemon.rss_kb()

    dropped: dict[str, float] = {}
    (site.inbox / "other").mkdir()
    for rel in sorted(sources):  # as fast as the filesystem allows
        (stage / rel).rename(site.inbox / rel)
        dropped[rel] = time.time()
    daemon.wait_for(lambda: len(listing(site.done)) + len(listing(site.failed)) // 2
                    == len(sources), 120, "every file handled")
    assert listing(site.failed) == []
    peak_rss = daemon.peak_rss_kb()
    log = daemon.log()
    assert daemon.stop() == 0

    # Exactly once, none lost.
    jobs = site.jobs()
    assert sorted(j["source"] for j in jobs) == sorted(sources)
    assert {j["state"] for j in jobs} == {"done"} and {j["attempts"] for j in jobs} == {1}
    outputs = listing(site.outbox)
    assert len(outputs) == len(sources) and not any("-1." in o for o in outputs)
    assert checksums(site.done) == sources
    assert listing(site.inbox) == [] and listing(site.work) == []
    assert temp_files(site.root / "data") == []
    for rel in sources:
        assert log.count(f"started {rel} ") == 1

    # Each file noticed from its own event ("noticed X", never "noticed X (scan)"): a lost
    # or ignored event would leave a file to the rescan, rescan_seconds later. The figures
    # are printed for the record (pytest -s); bench/soak.py reports them at full size.
    noticed = {}
    for line in log.splitlines():
        match = re.search(r" nstd\.daemon\.supervisor: noticed (\S+)( \(scan\))?$", line)
        if match:
            assert not match.group(2), f"noticed by a scan, not its event: {line}"
            noticed.setdefault(match.group(1), log_time(line))
    assert sorted(noticed) == sorted(sources)
    latencies = sorted(noticed[rel] - dropped[rel] for rel in sources)
    worst = latencies[-1]
    print(f"\n{len(sources)} files: notice latency median {latencies[len(latencies) // 2]:.3f} s,"
          f" max {worst:.3f} s; RSS ready {idle_rss / 1024:.0f} MiB, "
          f"peak {peak_rss / 1024:.0f} MiB")
    shutil.rmtree(stage)

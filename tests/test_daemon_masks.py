"""Style masks in the daemon: a sidecar names a mask per style, the masks lie beside the input
as ``*.mask.png``, are checked at intake, are never jobs themselves, and reach the engine as
copies in the job's own folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from watchdog.events import FileCreatedEvent

from nstd.config import parse_config
from nstd.daemon.ledger import Ledger, ledger_path
from nstd.daemon.maskfiles import is_mask_name
from nstd.daemon.schema import MIGRATIONS
from nstd.daemon.watch import is_candidate_name
from nstd.temporal.plan import fingerprint
from nstd.testing.media import write_test_image
from nstd.testing.stepped import SteppedSite


def write_mask(path: Path, size: tuple[int, int] = (24, 16), white: str = "top") -> Path:
    """A greyscale mask of ``size`` (w, h): white in the top or bottom half, or all black."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    if white == "top":
        mask[: h // 2] = 255
    elif white == "bottom":
        mask[h // 2:] = 255
    Image.fromarray(mask, "L").save(path)
    return path


@pytest.fixture()
def site(tmp_path: Path) -> SteppedSite:
    site = SteppedSite(tmp_path)
    write_test_image(tmp_path / "styles" / "other.png", size=(16, 16), seed=2)
    site.mask_bytes: list[list[bytes]] = []  # what the engine could read while it ran

    def record(request: Any, kwargs: Any) -> None:
        site.mask_bytes.append([p.read_bytes() for p in request.masks])

    site.runner.action = record
    site.start()
    return site


def drop_with_sidecar(site: SteppedSite, sidecar: str, name: str = "a.png") -> None:
    (site.inbox / f"{name}.yaml").write_text(sidecar)
    site.drop(name)  # 24x16
    site.step()
    site.settle()


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


TWO_MASKS = "style_masks:\n  mosaic: sky.mask.png\n  other: ground.mask.png\n"


def test_each_style_gets_its_mask_and_the_engine_reads_copies(site: SteppedSite) -> None:
    sky = write_mask(site.inbox / "sky.mask.png", white="top")
    ground = write_mask(site.inbox / "ground.mask.png", white="bottom")
    site.daemon.handler.dispatch(FileCreatedEvent(str(sky)))  # noticed, never a job
    drop_with_sidecar(site, TWO_MASKS)

    [request] = site.runner.requests
    assert [p.name for p in request.styles] == ["mosaic.png", "other.png"]
    assert request.blend == (1.0, 1.0)
    assert site.mask_bytes == [[sky.read_bytes(), ground.read_bytes()]]
    assert all(not p.is_relative_to(site.inbox) for p in request.masks)  # the job's copies
    assert files(site.outbox) == ["a.mosaic+other.png"]
    [job] = site.ledger.recent(10)
    assert job.source == "a.png" and job.state == "done"
    assert job.style == "mosaic+other"
    assert job.masks == (("mosaic", "sky.mask.png"), ("other", "ground.mask.png"))
    # The masks are the user's: they stay in the inbox for the next photo.
    assert files(site.inbox) == ["ground.mask.png", "sky.mask.png"]


def test_a_mask_shared_by_two_photos_serves_both(site: SteppedSite) -> None:
    write_mask(site.inbox / "sky.mask.png", white="top")
    write_mask(site.inbox / "ground.mask.png", white="bottom")
    drop_with_sidecar(site, TWO_MASKS, "a.png")
    drop_with_sidecar(site, TWO_MASKS, "b.png")
    assert files(site.outbox) == ["a.mosaic+other.png", "b.mosaic+other.png"]
    assert len(site.runner.requests) == 2


@pytest.mark.parametrize(("sidecar", "masks", "reason"), [
    (TWO_MASKS, {"sky.mask.png": "top"},
     "style mask inbox/ground.mask.png is missing"),
    (TWO_MASKS, {"sky.mask.png": "top", "ground.mask.png": "black"},
     "style mask inbox/ground.mask.png is empty (all black)"),
    (TWO_MASKS, {"sky.mask.png": "top", "ground.mask.png": (30, 30)},
     "style mask inbox/ground.mask.png is 30x30 but the image is 24x16"),
    ("style_masks:\n  mosaic: sky.png\n", {},
     "sky.png must be named *.mask.png"),
    ("style_masks:\n  mosaic: ../sky.mask.png\n", {},
     "must be a plain file name in the same folder as the input"),
    ("style_masks:\n  nosuch: sky.mask.png\n", {"sky.mask.png": "top"},
     "no style image named 'nosuch'"),
    ("style_name: other\nstyle_masks:\n  mosaic: sky.mask.png\n", {"sky.mask.png": "top"},
     "style_name and style_masks: give one"),
    ("style_masks: [sky.mask.png]\n", {},
     "style_masks: must map each style name to its mask file"),
])
def test_bad_masks_fail_the_job_at_intake_with_the_reason(
        site: SteppedSite, sidecar: str, masks: dict[str, Any], reason: str) -> None:
    for name, white in masks.items():
        if isinstance(white, tuple):
            write_mask(site.inbox / name, size=white)
        else:
            write_mask(site.inbox / name, white=white)
    drop_with_sidecar(site, sidecar)
    assert site.runner.requests == []
    [job] = site.ledger.recent(10)
    assert job.state == "failed"
    assert reason in job.error, job.error
    assert reason in (Path(site.config.daemon.failed) / "a.png.error.txt").read_text()


def test_a_mask_removed_after_intake_fails_the_job_at_claim(site: SteppedSite) -> None:
    write_mask(site.inbox / "sky.mask.png")
    (site.inbox / "b.png.yaml").write_text("style_masks:\n  mosaic: sky.mask.png\n")
    # a.png runs first; while it runs, the mask b.png was queued with is deleted.
    site.runner.action = lambda request, kwargs: (site.inbox / "sky.mask.png").unlink(
        missing_ok=True)
    site.drop("a.png")
    site.drop("b.png", seed=1)
    site.step()
    for _ in range(4):
        site.settle()
    jobs = {job.source: job for job in site.ledger.recent(10)}
    assert jobs["a.png"].state == "done"
    assert jobs["b.png"].state == "failed"
    assert "style mask inbox/sky.mask.png is missing" in jobs["b.png"].error


def test_mask_files_are_never_jobs() -> None:
    assert is_mask_name("sky.mask.png") and is_mask_name("Sky.MASK.JPG")
    assert not is_mask_name("mask.png") and not is_mask_name("sky.png")
    assert not is_candidate_name("sky.mask.png")
    assert is_candidate_name("masked.png") and is_candidate_name("sky.mask.png.jpg")


def test_a_version_1_ledger_gains_the_masks_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (1)")
    db.execute("INSERT INTO jobs (source, content_key, style, settings, state, created) "
               "VALUES ('old.png', 'k', 'mosaic', '{}', 'done', 1.0)")
    db.commit()
    db.close()
    with Ledger.open(path) as ledger:
        [job] = ledger.recent(10)
        assert (job.source, job.state, job.masks) == ("old.png", "done", ())
        added = ledger.enqueue("new.png", "k2", "a+b", {}, 2.0, (("a", "x.mask.png"),
                                                                ("b", "y.mask.png")))
        assert added is not None and added.masks == (("a", "x.mask.png"), ("b", "y.mask.png"))


def test_stored_frames_depend_on_the_masks_and_unmasked_jobs_keep_their_fingerprint(
        tmp_path: Path) -> None:
    source = write_test_image(tmp_path / "clip.png")
    style = write_test_image(tmp_path / "style.png", seed=1)
    sky = write_mask(tmp_path / "sky.mask.png")
    info = SimpleNamespace(frame_count=10)  # all the fingerprint reads of a probe
    config = parse_config({})
    plain = fingerprint(source, [style], [1.0], config, info, (24, 16))
    masked = fingerprint(source, [style], [1.0], config, info, (24, 16), [sky])
    assert "masks" not in plain
    assert masked != plain
    write_mask(sky, white="bottom")
    assert fingerprint(source, [style], [1.0], config, info, (24, 16), [sky]) != masked


def test_a_mask_copied_at_claim_is_never_read_through_a_link(tmp_path: Path) -> None:
    from nstd.daemon.maskfiles import link_masks
    from nstd.errors import InputError

    secret = tmp_path / "secret.png"
    write_mask(secret)
    (tmp_path / "sky.mask.png").symlink_to(secret)
    with pytest.raises(InputError, match="symbolic link"):
        link_masks([tmp_path / "sky.mask.png"], tmp_path / "job")
    assert not any((tmp_path / "job").iterdir())

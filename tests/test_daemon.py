"""The daemon, stepped by hand: a fake clock, a fake engine and job runner, no subprocess.

`nstd.testing.stepped.SteppedSite` drives `Daemon.step(now)` with injected time; watchdog
events are built by hand and given to the daemon's handler. Its runner stands in for
`nstd.pipeline.run_job`: it writes a small image at the requested output (or raises what a
test needs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from watchdog.events import FileCreatedEvent, FileModifiedEvent, FileMovedEvent

from nstd.cli.main import main
from nstd.config import Config, parse_config
from nstd.daemon import outcome
from nstd.daemon.intake import read_sidecar, resolve_style
from nstd.daemon.startup import check_folders
from nstd.errors import (
    ConfigError,
    InputError,
    Interrupted,
    OutOfMemoryError,
    TransientError,
)
from nstd.job import JobRequest
from nstd.media.images import write_image
from nstd.testing.media import write_test_image
from nstd.testing.stepped import SETTLE, SteppedSite


def make_config(root: Path, **daemon: Any) -> Config:
    settings = {"settle_seconds": SETTLE, "rescan_seconds": 60.0, "max_attempts": 3,
                "retry_backoff_seconds": 10.0, **daemon}
    return parse_config({"daemon": settings, "style": {"max_side": 32}}, base_dir=root)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    styles = tmp_path / "styles"
    styles.mkdir()
    write_test_image(styles / "mosaic.png", size=(16, 16), seed=1)
    write_test_image(styles / "other.jpg", size=(16, 16), seed=2)
    return tmp_path


@pytest.fixture()
def rig(root: Path) -> SteppedSite:
    return SteppedSite(root)


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- noticing


def test_a_file_is_taken_only_once_it_has_settled(rig: SteppedSite) -> None:
    write_test_image(rig.inbox / "early.png", size=(24, 16))  # there before start: the scan
    rig.start()
    assert not rig.step()
    assert not rig.step(SETTLE / 2)
    assert rig.runner.requests == []
    assert rig.step(SETTLE / 2 + 0.01)
    assert [r.source.name for r in rig.runner.requests] == ["early.png"]
    assert files(rig.outbox) == ["early.mosaic.png"]
    assert files(rig.done) == ["early.png"]
    assert files(rig.inbox) == []


def test_a_growing_file_is_never_taken(rig: SteppedSite) -> None:
    rig.start()
    path = rig.inbox / "slow.png"
    with open(path, "wb") as handle:
        for _ in range(10):
            handle.write(b"x" * 100)
            handle.flush()
            rig.daemon.handler.dispatch(FileModifiedEvent(str(path)))
            rig.step(SETTLE / 2)
    assert rig.runner.requests == [] and rig.ledger.counts()["queued"] == 0


def test_a_part_file_renamed_in_is_taken_under_its_final_name(rig: SteppedSite) -> None:
    rig.start()
    part = rig.inbox / "clip.png.part"
    write_test_image(rig.root / "tmp.png", size=(24, 16))
    os.replace(rig.root / "tmp.png", part)
    rig.daemon.handler.dispatch(FileCreatedEvent(str(part)))
    assert not rig.settle()  # a .part file is never a candidate
    final = rig.inbox / "clip.png"
    os.replace(part, final)
    rig.daemon.handler.dispatch(FileMovedEvent(str(part), str(final)))
    rig.step()
    assert rig.settle()
    assert files(rig.outbox) == ["clip.mosaic.png"]


def test_the_rescan_catches_files_without_events(rig: SteppedSite) -> None:
    rig.start()
    write_test_image(rig.inbox / "quiet.png", size=(24, 16))  # no event dispatched
    assert not rig.step(30)
    rig.step(31)  # rescan due: noticed now
    assert rig.settle()
    assert files(rig.outbox) == ["quiet.mosaic.png"]


def test_files_in_a_style_folder_keep_their_sub_folder(rig: SteppedSite) -> None:
    rig.start()
    rig.drop("other/trip/beach.png")
    rig.step()
    assert rig.settle()
    assert files(rig.outbox) == ["other/trip/beach.other.png"]
    assert files(rig.done) == ["other/trip/beach.png"]
    assert rig.runner.requests[0].styles[0].name == "other.jpg"


def test_a_file_noticed_many_times_is_one_job(rig: SteppedSite) -> None:
    rig.start()
    path = rig.drop("a.png")
    for _ in range(3):
        rig.daemon.handler.dispatch(FileModifiedEvent(str(path)))
    rig.step()
    rig.settle()
    rig.step(61)  # a rescan after it was done: the inbox is empty now
    rig.settle()
    assert len(rig.runner.requests) == 1
    assert rig.ledger.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}


def test_kept_originals_are_not_processed_again(root: Path) -> None:
    rig = SteppedSite(root, originals="keep")
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    for _ in range(3):
        rig.step(61)
        rig.settle()
    assert len(rig.runner.requests) == 1
    assert files(rig.inbox) == ["a.png"] and files(rig.outbox) == ["a.mosaic.png"]


def test_deleted_originals(root: Path) -> None:
    rig = SteppedSite(root, originals="delete")
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    assert files(rig.inbox) == [] and files(rig.done) == []
    assert files(rig.outbox) == ["a.mosaic.png"]


# --------------------------------------------------------------------------- outputs


def test_outputs_never_overwrite_and_take_numbered_names(rig: SteppedSite) -> None:
    rig.outbox.mkdir(exist_ok=True)
    (rig.outbox / "a.mosaic.png").write_bytes(b"somebody else's file")
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    assert files(rig.outbox) == ["a.mosaic-1.png", "a.mosaic.png"]
    assert (rig.outbox / "a.mosaic.png").read_bytes() == b"somebody else's file"
    assert rig.ledger.find("a.png").output == str(rig.outbox / "a.mosaic-1.png")


def test_the_output_is_recorded_before_it_is_published(rig: SteppedSite) -> None:
    seen: list[str | None] = []
    rig.runner.action = lambda request, _: seen.append(rig.ledger.find("a.png").output)
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    assert seen == [str(rig.outbox / "a.mosaic.png")]


def test_killed_after_publishing_finishes_without_computing_again(rig: SteppedSite) -> None:
    def killed_after_publish(request: JobRequest, _: dict[str, Any]) -> None:
        write_image(request.output, np.zeros((8, 8, 3), np.float32))
        raise KeyboardInterrupt  # stands in for kill -9: nothing after this runs

    rig.runner.action = killed_after_publish
    rig.start()
    rig.drop("a.png")
    rig.step()
    with pytest.raises(KeyboardInterrupt):
        rig.settle()
    assert rig.ledger.counts()["running"] == 1
    rig.restart()  # a new daemon on the same ledger and folders
    assert rig.step()
    assert rig.runner.requests == []  # not computed again
    assert files(rig.outbox) == ["a.mosaic.png"]
    assert files(rig.done) == ["a.png"]
    assert rig.ledger.counts()["done"] == 1


def test_killed_after_done_before_the_move_moves_without_reprocessing(
        rig: SteppedSite, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*_: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(outcome, "finish_source", killed)
    rig.start()
    rig.drop("a.png")
    rig.step()
    with pytest.raises(KeyboardInterrupt):
        rig.settle()
    monkeypatch.undo()
    assert files(rig.inbox) == ["a.png"] and rig.ledger.counts()["done"] == 1
    rig.restart()  # the start-up scan notices a.png again
    rig.settle()
    assert rig.runner.requests == []
    assert files(rig.inbox) == [] and files(rig.done) == ["a.png"]
    assert files(rig.outbox) == ["a.mosaic.png"]


def test_stale_temp_files_and_work_folders_are_removed_at_start(rig: SteppedSite) -> None:
    stale = rig.outbox / "sub" / ".a.mosaic.png.99999999.0123abcd.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    foreign = rig.outbox / ".keep-me.tmp"
    foreign.write_bytes(b"not ours")
    orphan = Path(rig.config.daemon.work) / "42"
    orphan.mkdir(parents=True)
    rig.start()
    assert not stale.exists() and foreign.exists() and not orphan.exists()


def test_a_replaced_source_is_left_alone_and_queued_as_a_new_job(rig: SteppedSite) -> None:
    def replace(request: JobRequest, _: dict[str, Any]) -> None:
        write_test_image(request.source, size=(30, 20), seed=9)

    rig.runner.action = replace
    rig.start()
    path = rig.drop("a.png")
    rig.step()
    rig.settle()
    assert files(rig.inbox) == ["a.png"]  # the new bytes were not moved away
    rig.runner.action = None
    rig.daemon.handler.dispatch(FileModifiedEvent(str(path)))
    rig.step()
    rig.settle()
    assert len(rig.runner.requests) == 2
    assert files(rig.outbox) == ["a.mosaic-1.png", "a.mosaic.png"]
    assert files(rig.done) == ["a.png"]


def test_a_source_removed_before_it_is_claimed_is_dropped(rig: SteppedSite) -> None:
    rig.start()
    path = rig.drop("a.png")
    rig.step()
    rig.clock.t += SETTLE + 0.01
    rig.daemon.intake(rig.clock.t, rig.clock.t)  # queued, not claimed yet
    path.unlink()
    assert rig.step()
    assert rig.runner.requests == [] and rig.jobs() == []


# --------------------------------------------------------------------------- failures


def test_transient_errors_retry_with_backoff_then_fail(root: Path) -> None:
    rig = SteppedSite(root, max_attempts=2)

    def busy(*_: Any) -> None:
        raise TransientError("the file is briefly unreadable")

    rig.runner.action = busy
    rig.start()
    rig.drop("a.png")
    rig.step()
    assert rig.settle()
    job = rig.ledger.find("a.png")
    assert job.state == "queued" and job.attempts == 1 and job.output is None
    assert not rig.step(5)  # backing off for 10 s
    assert rig.step(6)
    assert rig.ledger.find("a.png").state == "failed"
    assert files(rig.failed) == ["a.png", "a.png.error.txt"]
    report = (rig.failed / "a.png.error.txt").read_text()
    assert "briefly unreadable" in report and "attempts: 2" in report
    assert "max_side: 32" in report  # the settings used
    assert files(rig.outbox) == []


def test_an_unwritable_outbox_is_retried_not_failed(rig: SteppedSite) -> None:
    def read_only(request: JobRequest, _: dict[str, Any]) -> None:
        raise PermissionError(13, "Permission denied", str(request.output))

    rig.runner.action = read_only
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    job = rig.ledger.find("a.png")
    assert job.state == "queued" and "Permission denied" in job.error
    assert files(rig.inbox) == ["a.png"] and files(rig.failed) == []


def test_out_of_memory_retries_with_half_the_memory_budget_at_the_same_size(
        rig: SteppedSite, caplog: pytest.LogCaptureFixture) -> None:
    def oom_once(request: JobRequest, _: dict[str, Any]) -> None:
        if len(rig.runner.requests) == 1:
            raise OutOfMemoryError("out of GPU memory stylizing 32x21")

    rig.runner.action = oom_once  # the config's style.max_side is 32
    rig.start()
    rig.drop("a.png")
    rig.step()
    with caplog.at_level(logging.INFO, logger="nstd.daemon"):
        rig.settle()
        rig.step(10.01)
    sizes = [r.config.style.max_side for r in rig.runner.requests]
    assert sizes == [32, 32]  # never a smaller output: smaller tiles instead
    shares = [r.config.model.auto_memory_share for r in rig.runner.requests]
    assert shares == [0.5, 0.25]
    assert ("out of memory with model.auto_memory_share 0.5; the next attempt uses 0.25 "
            "(smaller tiles, same output size)") in caplog.text
    assert rig.ledger.find("a.png").state == "done"
    assert files(rig.outbox) == ["a.mosaic.png"]


@pytest.mark.parametrize("error", [InputError("a.png is truncated or corrupt"),
                                   RuntimeError("something nobody expected")])
def test_permanent_and_unexpected_errors_fail_at_once(rig: SteppedSite, error: Exception) -> None:
    def fail(*_: Any) -> None:
        raise error

    rig.runner.action = fail
    rig.start()
    rig.drop("a.png")
    (rig.inbox / "a.png.yaml").write_text("style:\n  iterations: 4\n")
    rig.drop("b.png", seed=3)
    rig.step()
    rig.settle()
    rig.runner.action = None
    assert rig.step()  # the daemon goes on with the next file
    job = rig.ledger.find("a.png")
    assert job.state == "failed" and job.attempts == 1 and str(error) in job.error
    if isinstance(error, InputError):  # held a while: it may be a copy that paused
        assert files(rig.failed) == []
        rig.step(3 * SETTLE + 0.01)
    assert files(rig.failed) == ["a.png", "a.png.error.txt", "a.png.yaml"]
    assert "iterations: 4" in (rig.failed / "a.png.error.txt").read_text()
    assert files(rig.outbox) == ["b.mosaic.png"]


def test_stop_during_a_job_puts_it_back_without_penalty(rig: SteppedSite) -> None:
    def stopped(request: JobRequest, kwargs: dict[str, Any]) -> None:
        rig.daemon.request_stop()  # what the SIGTERM handler does
        assert kwargs["should_stop"]()
        raise Interrupted("stylization stopped on request")

    rig.runner.action = stopped
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    job = rig.ledger.find("a.png")
    assert job.state == "queued" and job.attempts == 0
    assert files(rig.inbox) == ["a.png"] and files(rig.outbox) == []
    assert not rig.step()  # no new job is claimed once stopping


# --------------------------------------------------------------------------- styles, sidecars


def test_a_sidecar_picks_the_style_and_overrides_settings(rig: SteppedSite) -> None:
    rig.start()
    (rig.inbox / "a.png.yaml").write_text("style_name: other\nstyle:\n  iterations: 7\n")
    rig.drop("a.png")
    rig.step()
    rig.settle()
    request = rig.runner.requests[0]
    assert request.styles[0].name == "other.jpg"
    assert request.config.style.iterations == 7
    assert request.config.style.max_side == 32  # the rest is the daemon's
    assert files(rig.outbox) == ["a.other.png"]
    assert files(rig.done) == ["a.png", "a.png.yaml"]
    assert rig.ledger.find("a.png").settings == {"style": {"iterations": 7}}


@pytest.mark.parametrize(("sidecar", "reason"), [
    ("style_name: ../styles/mosaic", "is not allowed"),
    ("style_name: /etc/passwd", "is not allowed"),
    ("style_name: nosuch", "no style image named 'nosuch'"),
    ("style:\n  iterations: many", "style.iterations: must be an integer"),
    ("style:\n  colour: red", "style.colour: unknown key"),
    ("daemon:\n  outbox: /tmp", "daemon: cannot be set per job"),
    ("limits:\n  max_pixels: 1000000000000", "limits: cannot be set per job"),
    ("cluster:\n  ray_address: auto", "cluster: cannot be set per job"),
    ("model:\n  weights: /etc/shadow", "model.weights: cannot be set per job"),
    ("style: [1, 2", "not valid YAML"),
    ("- a list", "must be a mapping"),
])
def test_bad_sidecars_fail_the_job_with_the_reason(rig: SteppedSite, sidecar: str,
                                                   reason: str) -> None:
    rig.start()
    (rig.inbox / "a.png.yaml").write_text(sidecar + "\n")
    rig.drop("a.png")
    rig.step()
    rig.settle()
    assert rig.runner.requests == []
    job = rig.ledger.find("a.png")
    assert job.state == "failed" and reason in job.error
    assert files(rig.failed) == ["a.png", "a.png.error.txt", "a.png.yaml"]
    assert reason in (rig.failed / "a.png.error.txt").read_text()


def test_an_unknown_style_folder_fails_its_files(rig: SteppedSite) -> None:
    rig.start()
    rig.drop("nosuch/a.png")
    rig.step()
    rig.settle()
    assert rig.runner.requests == []
    assert files(rig.failed) == ["nosuch/a.png", "nosuch/a.png.error.txt"]
    assert "no style image named 'nosuch'" in rig.ledger.find("nosuch/a.png").error


def test_style_links_out_of_the_styles_folder_are_refused(root: Path) -> None:
    outside = root / "secret.png"
    write_test_image(outside, size=(8, 8))
    (root / "styles" / "evil.png").symlink_to(outside)
    with pytest.raises(InputError, match="points outside"):
        resolve_style(root / "styles", "evil")
    assert resolve_style(root / "styles", "mosaic").name == "mosaic.png"
    assert resolve_style(root / "styles", "mosaic.png").name == "mosaic.png"


def test_sidecar_alias_bombs_are_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    bomb = tmp_path / "x.png.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="too complex"):
        read_sidecar(bomb)


# --------------------------------------------------------------------------- start-up checks


@pytest.mark.parametrize(("daemon", "message"), [
    ({"outbox": "data/inbox/out"}, "daemon.outbox"),
    ({"done": "data/inbox"}, "are the same folder"),
    ({"state": "data"}, "is inside daemon.state"),
    ({"styles": "data/inbox/styles"}, "daemon.styles"),
])
def test_overlapping_folders_are_refused(root: Path, daemon: dict[str, str],
                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_folders(make_config(root, **daemon))


def test_unwritable_folders_and_a_missing_default_style_are_refused(root: Path) -> None:
    (root / "blocker").write_text("a file where a folder should be")
    with pytest.raises(ConfigError, match="daemon.work"):
        check_folders(make_config(root, work="blocker/work"))
    with pytest.raises(ConfigError, match="daemon.default_style: no style image named 'gone'"):
        check_folders(make_config(root, default_style="gone"))
    config = make_config(root)
    check_folders(config)  # creates the missing folders
    assert all(Path(getattr(config.daemon, k)).is_dir()
               for k in ("inbox", "outbox", "work", "failed", "done", "state"))


# --------------------------------------------------------------------------- systemd


def test_ready_status_and_watchdog(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")  # ping every 10 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    rig = SteppedSite(root)
    rig.start()
    assert rig.notifier.sent[0] == "READY=1"
    assert rig.notifier.sent[1] == "STATUS=idle; 0 queued"
    rig.drop("a.png")
    rig.drop("b.png", seed=2)
    rig.step()
    rig.notifier.sent.clear()
    rig.settle()
    rig.step()
    rig.notifier.sent.clear()
    # WATCHDOG=1 on the supervisor's own timer (every half of the ping interval).
    assert rig.daemon.idle_timeout(rig.clock.t, rig.clock.t) <= 5.0
    rig.clock.t += 5
    rig.daemon.ping(rig.clock.t)
    assert rig.notifier.sent == ["WATCHDOG=1"]


def test_the_idle_wait_is_until_the_next_thing_due(rig: SteppedSite) -> None:
    rig.start()
    assert rig.daemon.idle_timeout(rig.clock.t, rig.clock.t) == pytest.approx(60.0)
    rig.drop("a.png")
    rig.step()
    assert rig.daemon.idle_timeout(rig.clock.t, rig.clock.t) == pytest.approx(SETTLE)
    started = time.monotonic()
    rig.daemon.wait(0.05)  # nothing arrives: it returns after the timeout
    assert 0.04 <= time.monotonic() - started < 5
    rig.settle()
    started = time.monotonic()
    rig.drop("b.png", seed=1)  # an inbox event wakes it at once, long before the timeout
    rig.daemon.wait(60)
    assert time.monotonic() - started < 5
    rig.step()  # the step takes what woke it: b.png is noticed and settling
    assert rig.daemon.idle_timeout(rig.clock.t, rig.clock.t) == pytest.approx(SETTLE)


# --------------------------------------------------------------------------- status and retry


def test_status_json_and_text(rig: SteppedSite, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(request: JobRequest, _: dict[str, Any]) -> None:
        if request.source.name == "bad.png":
            raise InputError("bad.png is truncated or corrupt")

    rig.runner.action = fail
    rig.start()
    rig.drop("bad.png")
    rig.drop("good.png", seed=2)
    rig.step()
    rig.settle()
    rig.step()
    config = rig.config_file()
    assert main(["status", "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 1}
    assert {j["source"]: j["state"] for j in data["recent"]} == {"bad.png": "failed",
                                                                  "good.png": "done"}
    assert data["daemon"] == {"running": False, "pid": None}
    assert main(["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "1 done, 1 failed" in text and "bad.png is truncated" in text


def test_retry_moves_the_file_back_and_requeues_it(rig: SteppedSite,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*_: Any) -> None:
        raise InputError("a.png is truncated or corrupt")

    rig.runner.action = fail
    rig.start()
    rig.drop("other/a.png")
    (rig.inbox / "other" / "a.png.yaml").write_text("style:\n  iterations: 3\n")
    rig.step()
    rig.settle()
    rig.step(3 * SETTLE + 0.01)  # unreadable files are held a while (a copy that paused)
    assert files(rig.failed) == ["other/a.png", "other/a.png.error.txt", "other/a.png.yaml"]
    config = rig.config_file()
    assert main(["retry", "a.png", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "requeued 1 job"
    assert files(rig.failed) == []
    assert list(rig.failed.iterdir()) == []  # no empty failed/other/ left behind
    assert files(rig.inbox) == ["other/a.png", "other/a.png.yaml"]
    job = rig.ledger.find("other/a.png")
    assert job.state == "queued" and job.attempts == 0
    rig.runner.action = None
    assert rig.step()
    assert files(rig.outbox) == ["other/a.other.png"]
    assert rig.runner.requests[-1].config.style.iterations == 3
    assert main(["retry", "--all", "--config", str(config)]) == 2  # nothing failed now


def test_retry_that_puts_nothing_back_exits_1(rig: SteppedSite,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*_: Any) -> None:
        raise ConfigError("style.iterations: too many")  # fails at once, for good

    rig.runner.action = fail
    rig.start()
    rig.drop("a.png")
    rig.step()
    rig.settle()
    (rig.failed / "a.png").unlink()  # someone cleaned failed/ by hand
    config = rig.config_file()
    assert main(["retry", "--all", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "no longer in" in out and out.splitlines()[-1] == "requeued 0 jobs"


def test_status_shows_files_that_are_settling(rig: SteppedSite,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rig.start()
    rig.drop("other/a.png")
    rig.step()
    config = rig.config_file()
    assert main(["status", "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["source"] for f in data["settling"]] == ["other/a.png"] and data["queued"] == []
    assert main(["status", "--config", str(config)]) == 0
    assert "  other/a.png (" in capsys.readouterr().out
    rig.clock.t += SETTLE + 0.01
    rig.daemon.intake(rig.clock.t, rig.clock.t)  # queued, not yet claimed
    assert main(["status", "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)  # listed once
    assert data["settling"] == [] and [j["source"] for j in data["queued"]] == ["other/a.png"]


def test_after_a_restart_queued_files_are_not_counted_as_settling(
        rig: SteppedSite, caplog: pytest.LogCaptureFixture) -> None:
    rig.runner.action = lambda *_: (_ for _ in ()).throw(AssertionError("not to run"))
    rig.start()
    for name in ("a.png", "b.png", "c.png"):
        rig.drop(name)
    rig.step()
    rig.clock.t += SETTLE + 0.01
    rig.daemon.intake(rig.clock.t, rig.clock.t)  # queued, not yet claimed
    assert rig.ledger.counts()["queued"] == 3
    rig.drop("d.png")  # arrives while the daemon is down
    rig.daemon = rig.new_daemon()
    with caplog.at_level(logging.INFO, logger="nstd.daemon"):
        rig.start()
    assert "3 queued, 1 file settling" in caplog.text, caplog.text


def test_a_style_added_while_the_daemon_runs_is_used_without_a_restart(rig: SteppedSite) -> None:
    rig.start()
    write_test_image(rig.root / "styles" / "fresh.png", size=(16, 16), seed=5)
    rig.drop("fresh/x.png")
    rig.step()
    rig.settle()
    rig.step()
    assert files(rig.outbox) == ["fresh/x.fresh.png"]


# --------------------------------------------------------------------------- the engine cache


def test_engine_cache_loads_once_and_reuses_extractors(vgg_weights_path: Path) -> None:
    from nstd.daemon.engines import EngineCache

    config = parse_config({"model": {"weights": str(vgg_weights_path), "device": "cpu"}})
    engines = EngineCache.load(config.model)
    first = engines.stylizer(config)
    second = engines.stylizer(config)
    assert first is not second and first.features is second.features
    avg = parse_config({"model": {"weights": str(vgg_weights_path), "device": "cpu",
                                  "pooling": "avg"}})
    assert engines.stylizer(avg).features is not first.features
    fewer = parse_config({"model": {"weights": str(vgg_weights_path), "device": "cpu"},
                          "style": {"style_layers": {"relu1_1": 1.0}, "content_layer": "relu2_2"}})
    assert engines.stylizer(fewer).features.deepest == "relu2_2"


# --------------------------------------------------------------------------- the job contract


def test_a_file_read_as_truncated_that_then_changes_is_a_copy_in_progress(rig: SteppedSite) -> None:
    def truncated(request: JobRequest, _: dict[str, Any]) -> None:
        if len(rig.runner.requests) == 1:
            raise InputError("a.png is truncated or corrupt")

    rig.runner.action = truncated
    rig.start()
    path = rig.drop("a.png")
    rig.step()
    rig.settle()
    assert rig.ledger.find("a.png").state == "failed" and files(rig.failed) == []
    with open(path, "ab") as f:  # the copy goes on after its pause
        f.write(b"\0" * 64)
    rig.daemon.handler.dispatch(FileModifiedEvent(str(path)))
    rig.step()
    rig.settle()
    rig.step(3 * SETTLE)  # the held failure's recheck finds other bytes: nothing moved
    assert files(rig.failed) == []
    assert rig.ledger.find("a.png").state == "done"
    assert files(rig.outbox) == ["a.mosaic.png"] and files(rig.done) == ["a.png"]


@pytest.mark.parametrize(("sidecar", "reason"), [
    ("style:\n  iterations: 1000000000\n",
     "style.iterations: 1000000000 is more than limits.max_iterations (10000)"),
    ("video:\n  frame_iterations: 5000\n",
     "video.frame_iterations: 5000 is more than limits.max_frame_iterations (1000)"),
])
def test_a_sidecar_cannot_exceed_the_limits(rig: SteppedSite, sidecar: str, reason: str) -> None:
    rig.start()
    rig.drop("a.png")
    (rig.inbox / "a.png.yaml").write_text(sidecar)
    rig.step()
    rig.settle()
    job = rig.ledger.find("a.png")
    assert job.state == "failed" and reason in job.error
    assert rig.runner.requests == []  # refused at intake: no worker time spent


def test_init_image_on_a_video_is_refused_at_intake(root: Path) -> None:
    from nstd.daemon.intake import decide

    write_test_image(root / "start.png", size=(16, 16), seed=3)
    config = parse_config({"style": {"init_image": str(root / "start.png")},
                           "daemon": {"styles": str(root / "styles")}}, base_dir=root)
    clip = root / "clip.mp4"
    clip.write_bytes(b"x")
    (root / "clip.mp4.yaml").write_text("style:\n  init: image\n")
    intake = decide("clip.mp4", clip, config)
    assert intake.error is not None and "style.init: 'image' is for images" in intake.error
    image = root / "a.png"
    write_test_image(image, size=(16, 16))
    (root / "a.png.yaml").write_text("style:\n  init: image\n")
    assert decide("a.png", image, config).error is None  # an image may start from it

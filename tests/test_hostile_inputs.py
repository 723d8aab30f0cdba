"""Hostile and broken inputs dropped into a running `nstd run`: each ends in a defined state.

    failed/      with <name>.error.txt naming the reason (permanent: no retries)
    outbox/      for valid files with awkward names (spaces, leading dash, quotes,
                 non-ASCII, a newline, a colon, 230 bytes) or deep folders
    left alone   in the inbox, untouched, logged: symlinks, a FIFO, a file that keeps growing,
                 a zero-byte file, a non-media name, folders nested too deep

The daemon keeps running throughout (a last file dropped afterwards is processed), no source
is lost or altered (checksums), a symlink's target outside the inbox is never read or moved,
every log record stays on one line, and the process holds no socket.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from watchdog.events import FileModifiedEvent

from nstd.testing.media import (
    crafted_png_header,
    truncate_file,
    write_test_audio,
    write_test_clip,
    write_test_image,
)
from nstd.testing.site import Site, checksums, kill_all, listing, sha256

REPO = Path(__file__).resolve().parent.parent
NESTED = "mosaic/a/b/c/d/e/f/g/h/deep.png"
TOO_DEEP = "/".join(f"d{i}" for i in range(34)) + "/lost.png"
LONG = "L" * 230 + ".png"

@pytest.fixture(autouse=True)
def _no_daemon_left() -> Iterator[None]:
    yield
    kill_all()  # a failed test leaves no daemon behind


# inbox path -> a reason the error.txt must contain
FAILED = {
    "text.png": "inbox/text.png is not a PNG image: its first bytes are text",  # at intake
    "text.mp4": "inbox/text.mp4 is not an MP4 video: its first bytes are text",
    "cut.mp4": "truncated or corrupt",
    "cut.png": "truncated or corrupt",
    "cut.jpg": "truncated or corrupt",
    "song.mp4": "has no video stream",
    "bomb.png": "declares too many pixels to be decoded safely",  # PIL's own bomb guard
    "big.png": "above limits.max_pixels",  # 1000 x 1000 header, no pixel data
    "long.mp4": "above limits.max_video_seconds",
    "wide.mp4": "above limits.max_pixels",
    "float.tif": "colour mode 'F'",
    "mosaic/dotdot.png": "is not allowed",
    "abs.png": "is not allowed",
    "keys.png": "style.colour: unknown key",
    "types.png": "style.iterations: must be an integer",
    "nosuch/x.png": "no style image named 'nosuch'",
    "fifo.png": "sidecar fifo.png.yaml is not a regular file",  # never opened blocking
    "slink.png": "sidecar slink.png.yaml is a symbolic link",  # never followed
}
SIDECARS = {
    "mosaic/dotdot.png": "style_name: ../styles/mosaic\n",
    "abs.png": "style_name: /etc/passwd\n",
    "keys.png": "style:\n  colour: red\n",
    "types.png": "style:\n  iterations: many\n",
}
# inbox path -> output path
DONE = {
    "with space.png": "with space.mosaic.png",
    "-leading dash.png": "-leading dash.mosaic.png",
    "quo\"te's.png": "quo\"te's.mosaic.png",
    "naïve-日本.png": "naïve-日本.mosaic.png",
    "new\nline.png": "new\nline.mosaic.png",
    "concat:v.mp4": "concat:v.mosaic.mp4",  # an FFmpeg protocol prefix in a name
    NESTED: NESTED.replace(".png", ".mosaic.png"),
    LONG: "L" * 189 + ".mosaic.png",  # cut to 200 bytes: the temp name must fit too
    "other/clip.mp4": "other/clip.other.mp4",
}
LEFT_ALONE = {  # inbox path -> what the log says about it
    "link.png": "is a symbolic link (not followed)",
    "x.mp4": "is not a regular file",
    "empty.png": "is empty (0 bytes)",
    "notes.txt": "not an image or video extension",
    "grow.png": "noticed grow.png",
    TOO_DEEP: "is nested deeper than 32 folders",
}


def write_inputs(site: Site, inbox: Path) -> Path:
    """Everything above into ``inbox`` (a staging folder); returns the symlink's target."""
    scratch = site.root / "scratch"
    scratch.mkdir()
    for rel, text in SIDECARS.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / f"{rel}.yaml").write_text(text)
    for rel in ("text.png", "text.mp4"):
        (inbox / rel).write_text("#EXTM3U\nfile:///etc/passwd\n")  # a playlist: never opened
    clip = write_test_clip(scratch / "cut.mp4", frames=24, size=(32, 24))
    shutil.move(truncate_file(clip, 0.5), inbox / "cut.mp4")
    for ext in (".png", ".jpg"):
        image = write_test_image(scratch / f"cut{ext}", size=(64, 48), seed=3)
        shutil.move(truncate_file(image, 0.5), inbox / f"cut{ext}")
    shutil.move(write_test_audio(scratch / "song.mp4", seconds=0.3), inbox / "song.mp4")
    (inbox / "bomb.png").write_bytes(crafted_png_header(40000, 40000))
    (inbox / "big.png").write_bytes(crafted_png_header(1000, 1000))
    write_test_clip(scratch / "long.mp4", frames=8, size=(32, 24), rate=Fraction(2))  # 4 s
    write_test_clip(scratch / "wide.mp4", frames=2, size=(640, 480))
    for rel in ("long.mp4", "wide.mp4"):
        shutil.move(scratch / rel, inbox / rel)
    write_test_image(inbox / "float.tif", size=(24, 16), mode="F")
    os.mkfifo(inbox / "fifo.png.yaml")
    (inbox / "slink.png.yaml").symlink_to("/etc/passwd")
    for rel in ("mosaic/dotdot.png", "abs.png", "keys.png", "types.png", "nosuch/x.png",
                "fifo.png", "slink.png"):
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        write_test_image(inbox / rel, size=(24, 16), seed=4)
    for i, rel in enumerate(DONE):
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".mp4"):
            write_test_clip(scratch / "ok.mp4", frames=6, size=(32, 24), rate=Fraction(12))
            shutil.move(scratch / "ok.mp4", inbox / rel)
        else:
            write_test_image(inbox / rel, size=(24, 16), seed=10 + i)
    secret = write_test_image(site.root / "secret.png", size=(24, 16), seed=99)
    (inbox / "link.png").symlink_to(secret)
    os.mkfifo(inbox / "x.mp4")
    (inbox / "empty.png").touch()
    (inbox / "notes.txt").write_text("not media\n")
    (inbox / TOO_DEEP).parent.mkdir(parents=True)
    write_test_image(inbox / TOO_DEEP, size=(24, 16), seed=5)
    return secret


@pytest.fixture()
def grower() -> Iterator[Callable[[Path], None]]:
    """Starts a process that appends 64 bytes to a file every 50 ms until the test ends (a
    process, not a thread: the test's own work must not be able to pause it)."""
    procs: list[subprocess.Popen[bytes]] = []
    code = ("import sys, time\n"
            "while True:\n"
            "    with open(sys.argv[1], 'ab') as f:\n"
            "        f.write(bytes(64))\n"
            "    time.sleep(0.05)\n")

    def grow(path: Path) -> None:
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(path)]))

    yield grow
    for proc in procs:
        proc.kill()
        proc.wait()


def test_every_hostile_input_ends_in_a_defined_state(
        tmp_path: Path, vgg_weights_path: Path, grower: Callable[[Path], None]) -> None:
    site = Site.create(tmp_path, vgg_weights_path, daemon={"settle_seconds": 0.5},
                       limits={"max_pixels": 200_000, "max_video_seconds": 3.0})
    daemon = site.start("run")
    assert daemon.sockets() == []  # no listener, no connection of any kind
    (site.inbox / "grow.png").write_bytes(b"\x89PNG")
    grower(site.inbox / "grow.png")
    stage = site.root / "stage"
    secret = write_inputs(site, stage)
    secret_sum, secret_mtime = sha256(secret), secret.stat().st_mtime_ns
    sources = checksums(stage)
    # Dropped at once: sidecars first (they must arrive before or with their input).
    for entry in sorted(stage.iterdir(), key=lambda p: (p.suffix != ".yaml", p.name)):
        entry.rename(site.inbox / entry.name)

    def finished() -> bool:
        failed = set(listing(site.failed))
        return (all(rel in failed and f"{rel}.error.txt" in failed for rel in FAILED)
                and set(DONE.values()) <= set(listing(site.outbox))
                and set(listing(site.inbox)) <= set(LEFT_ALONE) | {"grow.png"})

    daemon.wait_for(finished, 120, "every input handled")
    log = daemon.log()

    for rel, reason in FAILED.items():  # failed/, with the reason, byte for byte
        assert reason in (site.failed / f"{rel}.error.txt").read_text(), rel
        assert sha256(site.failed / rel) == sources[rel], rel
        # at intake ("refused", no attempt spent) or after one attempt in a worker
        assert re.search(rf"(refused {re.escape(rel)}|failed {re.escape(rel)} after 1 "
                         r"attempt): ", log), rel
    assert "retrying in" not in log  # permanent failures are not retried
    for rel in SIDECARS:
        assert (site.failed / f"{rel}.yaml").is_file()  # the sidecar travels with its input
    assert sorted(listing(site.outbox)) == sorted(DONE.values())  # no temp files either
    for rel in DONE:
        assert sha256(site.done / rel) == sources[rel], rel
    for rel, said in LEFT_ALONE.items():  # still there, logged
        assert os.path.lexists(site.inbox / rel), rel
        assert said in log, said
    for rel in ("empty.png", "notes.txt", TOO_DEEP):
        assert sha256(site.inbox / rel) == sources[rel]
    assert (site.inbox / "link.png").is_symlink()
    assert sha256(secret) == secret_sum and secret.stat().st_mtime_ns == secret_mtime
    assert (site.inbox / "x.mp4").is_fifo()
    assert {j["source"] for j in site.jobs()}.isdisjoint(
        {"grow.png", "link.png", "x.mp4", "empty.png", "notes.txt", TOO_DEEP})
    # One record per line: a newline in a file name is escaped, never a forged line.
    assert "new\\nline.png" in log
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    assert all(stamp.match(line) for line in log.splitlines()), log
    assert "Traceback" not in log

    # Still running and not blocked by the FIFO or the growing file.
    write_test_image(site.inbox / "last.png", size=(24, 16), seed=7)
    daemon.wait_for(lambda: (site.done / "last.png").exists(), 30, "a file after all that")
    assert daemon.sockets() == []
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- in-process


def test_a_file_that_keeps_growing_is_never_taken_and_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from nstd.config import parse_config
    from nstd.daemon.ledger import Ledger, ledger_path
    from nstd.daemon.startup import check_folders
    from nstd.daemon.supervisor import Daemon

    (tmp_path / "styles").mkdir()
    write_test_image(tmp_path / "styles" / "mosaic.png", size=(16, 16))
    config = parse_config({"daemon": {"settle_seconds": 5.0}}, base_dir=tmp_path)
    check_folders(config)
    clock = [1000.0]
    ledger = Ledger.open(ledger_path(config.daemon.state))
    from nstd.daemon.inline import InlineBackend
    from nstd.daemon.pool import WorkerPlan

    daemon = Daemon(config, ledger, backend=InlineBackend(object(), lambda *a, **k: None),
                    plans=[WorkerPlan(None, 1)], clock=lambda: clock[0],
                    monotonic=lambda: clock[0], watch=False)
    daemon.start(clock[0])
    path = Path(config.daemon.inbox) / "grow.mp4"
    with caplog.at_level(logging.INFO, logger="nstd"), open(path, "wb") as handle:
        for _ in range(700):  # 700 s of a file growing every 4 s (< settle_seconds)
            clock[0] += 1.0
            if int(clock[0]) % 4 == 0:
                handle.write(b"x" * 100)
                handle.flush()
                daemon.handler.dispatch(FileModifiedEvent(str(path)))
            daemon.step(clock[0])
    assert ledger.counts()["queued"] == 0 and ledger.find("grow.mp4") is None
    assert "grow.mp4 is still changing after 600 s; waiting until it stops" in caplog.text
    assert caplog.text.count("still changing") == 1  # once, not every step
    assert path.exists()


def test_the_service_code_has_no_shell_and_one_listener() -> None:
    """Static guard: file names never reach a shell, and nothing listens on a socket but the
    status page (nstd/web/server.py: ``daemon.http``, loopback unless a token is set).

    The subprocess users are the worker pool (nstd/daemon/pool.py): fixed argument lists
    (``python -m nstd.daemon.worker``, ``nvidia-smi -L``), and the hooks
    (nstd/daemon/hooks.py): the administrator's ``daemon.on_event`` argv from config.yaml,
    file names only in its environment; never a shell, never a file name in an argv."""
    pool = REPO / "nstd" / "daemon" / "pool.py"
    hooks = REPO / "nstd" / "daemon" / "hooks.py"
    web = REPO / "nstd" / "web" / "server.py"
    assert "shell" not in pool.read_text()
    assert "shell=" not in hooks.read_text().replace(" ", "")
    forbidden = re.compile(r"subprocess|os\.system|os\.popen|os\.exec|shell\s*=|\.listen\(|"
                           r"\.bind\(|socketserver|http\.server|asyncio\.start_server")
    offenders = []
    for path in sorted((REPO / "nstd").rglob("*.py")):
        if "testing" in path.parts:  # test support starts `nstd run` itself
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if path in (pool, hooks):
                code = code.replace("subprocess", "")
            if path == web:
                code = code.replace("http.server", "")
            if forbidden.search(code):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_decoders_refuse_oversized_inputs_before_decoding(tmp_path: Path) -> None:
    """The header is checked against limits before any pixel is decoded (fast, no memory)."""
    import tracemalloc

    from nstd.config import LimitsConfig
    from nstd.errors import InputError
    from nstd.media.container import probe_video
    from nstd.media.images import read_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(crafted_png_header(40000, 40000))
    big = tmp_path / "big.png"
    big.write_bytes(crafted_png_header(4000, 4000))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InputError, match="too many pixels to be decoded safely"):
        read_image(bomb, 50_000_000)
    with pytest.raises(InputError, match="above limits.max_pixels"):
        read_image(big, 1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000 and time.perf_counter() - started < 1.0  # 4.8 GB if decoded
    big = tmp_path / "big.mp4"
    with open(big, "wb") as handle:
        handle.truncate(2_000_000)  # sparse: its size is checked before it is opened
    with pytest.raises(InputError, match="above limits.max_file_bytes"):
        probe_video(big, LimitsConfig(max_file_bytes=1_000_000))

"""What a new user meets in the first hour (issue 12): `--weights` everywhere the network is
loaded, exit codes that tell systemd what to restart, `check-config` = `run`'s start-up
checks, the install script, weights error messages, `nstd status | head`, plurals, the device
line, `nstd styles`.

Daemon behaviour that needs a stepped daemon (status of settling files, retry) is in
tests/test_daemon.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from nstd.cli.main import build_parser, main
from nstd.config import PATH_KEYS, parse_config
from nstd.config_files import load_config
from nstd.daemon.stylelist import list_styles
from nstd.engine import weights
from nstd.errors import TransientError, WeightsError, WeightsUnavailableError
from nstd.testing.media import write_test_image
from nstd.text import plural

REPO = Path(__file__).resolve().parents[1]


def write_config(folder: Path, **daemon: object) -> Path:
    """A config whose daemon folders are under ``folder`` and whose styles hold mosaic.png."""
    styles = folder / "styles"
    styles.mkdir(exist_ok=True)
    write_test_image(styles / "mosaic.png", size=(24, 16), seed=1)
    path = folder / "config.yaml"
    path.write_text(json.dumps({"daemon": {"root": str(folder), **daemon}}))
    return path


# --------------------------------------------------------------------------- --weights


@pytest.mark.parametrize("argv", [
    ["run"], ["check-config"], ["weights", "show"], ["stylize", "a.png", "--style", "s.png"]])
def test_every_command_that_loads_the_network_takes_weights(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--weights", "vgg.pth"])
    assert args.weights == "vgg.pth"


def test_run_uses_the_weights_it_is_given(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`nstd run --weights` reaches the start-up checks (a missing file is refused there)."""
    config = write_config(tmp_path)
    missing = tmp_path / "nowhere.pth"
    assert main(["run", "--config", str(config), "--weights", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "model.weights" in err and str(missing) in err


# --------------------------------------------------------------------------- exit codes


@pytest.fixture()
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and a download that fails as it does without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_: object, **__: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path


def test_no_network_is_transient_and_exits_1_saying_what_to_do(
        no_network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        weights.load_vgg19_state_dict(None)
    assert isinstance(info.value, TransientError)  # the worker reports it as such
    assert main(["weights", "fetch"]) == 1  # not 2: systemd's RestartPreventExitStatus
    err = capsys.readouterr().err
    assert "--weights" in err and "Temporary failure" in err


def test_weights_fetch_without_network_says_what_to_do_now(
        no_network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A one-shot command: copy a weights file or pass --weights; not the daemon's words."""
    assert main(["weights", "fetch"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "copy" in err and str(weights.default_weights_path()) in err
    assert "--weights PATH" in err
    assert "systemd" not in err and "later start" not in err and "tries again" not in err


def test_a_download_that_is_wrong_is_not_transient(
        no_network: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_hash(*_: object, **__: object) -> None:
        raise RuntimeError('invalid hash value (expected "dcbb9e9d", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_hash)
    with pytest.raises(WeightsError) as info:
        weights.load_vgg19_state_dict(None)
    assert not isinstance(info.value, TransientError)


def test_run_exits_1_when_a_worker_cannot_fetch_the_weights_now(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The supervisor's code 1 (a worker's transient fatal error) is exit 1, not 2."""
    from nstd.daemon import supervisor

    monkeypatch.setattr(supervisor.Supervisor, "run", lambda self: supervisor.EXIT_TRANSIENT)
    assert main(["run", "--config", str(write_config(tmp_path))]) == 1
    assert "--weights" in capsys.readouterr().err


class FatalBackend:
    """Workers that report at start what `nstd.daemon.worker.main` reports when loading the
    network fails (a `nstd.daemon.backend.Backend`)."""

    def __init__(self, transient: bool) -> None:
        self.transient = transient

    def plans(self) -> None:
        return None

    def close(self) -> None:
        pass

    def spawn(self, index: int, plan: object, deliver, *, first: bool = True) -> object:
        deliver({"event": "fatal", "reason": "no network", "transient": self.transient})

        class Handle:
            pid, returncode = os.getpid(), None

            def poll(self) -> int | None:
                return 2

            def wait(self, timeout: float) -> int | None:
                return 2

            def send(self, message: dict) -> None:
                pass

            def kill(self) -> None:
                pass

        return Handle()


@pytest.mark.parametrize(("transient", "code"), [(True, 1), (False, 2)])
def test_the_supervisor_exit_code_follows_the_workers_fatal_error(
        tmp_path: Path, transient: bool, code: int) -> None:
    from nstd.testing.stepped import SteppedSite

    rig = SteppedSite(tmp_path, backend=FatalBackend(transient))
    assert rig.daemon.run() == code


def test_the_unit_restarts_transient_failures_for_as_long_as_they_last() -> None:
    """Exit 1 is restarted and no start limit gives up on it during a long network outage
    (5 starts in 10 minutes would); exit 2 is not restarted."""
    from test_unit_file import UNIT, one, parse_unit, timespan

    unit = parse_unit(UNIT.read_text())
    assert one(unit, "Service", "Restart") == "on-failure"
    prevent = one(unit, "Service", "RestartPreventExitStatus").split()
    assert "2" in prevent and "1" not in prevent
    interval = timespan(unit["Unit"].get("StartLimitIntervalSec", ["10"])[-1])
    burst = int(unit["Unit"].get("StartLimitBurst", ["5"])[-1])
    restart_sec = timespan(one(unit, "Service", "RestartSec"))
    # systemd counts starts in a window of StartLimitIntervalSec (0 = no limit)
    assert interval == 0 or restart_sec * burst >= interval, (interval, burst, restart_sec)
    assert restart_sec >= 10  # but no tight loop either


# --------------------------------------------------------------------------- check-config


def bad_configs(tmp_path: Path) -> dict[str, tuple[dict[str, object], str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return {
        "weights file missing": ({"model": {"weights": str(tmp_path / "gone.pth")}},
                                 "model.weights"),
        "outbox inside inbox": ({"daemon": {"outbox": "data/inbox/out"}}, "daemon.outbox"),
        "unknown default style": ({"daemon": {"default_style": "nope"}}, "daemon.default_style"),
        # the tests run as root, which may write anywhere: a file where a folder should be
        "unwritable inbox": ({"daemon": {"inbox": str(blocker / "inbox")}}, "daemon.inbox"),
    }


@pytest.mark.parametrize("case", ["weights file missing", "outbox inside inbox",
                                  "unknown default style", "unwritable inbox"])
def test_check_config_refuses_what_run_refuses(tmp_path: Path, case: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    extra, key = bad_configs(tmp_path)[case]
    config = write_config(tmp_path)
    data = json.loads(config.read_text())
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    config.write_text(json.dumps(data))
    assert main(["check-config", "--config", str(config)]) == 2
    checked = capsys.readouterr().err
    assert key in checked
    assert main(["run", "--config", str(config)]) == 2
    ran = capsys.readouterr().err
    assert ran.replace(str(config), "") == checked.replace(str(config), ""), (ran, checked)


def test_check_config_passes_a_good_config(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(write_config(tmp_path))]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


# --------------------------------------------------------------------------- daemon.root


def test_folders_default_under_daemon_root(tmp_path: Path) -> None:
    config = parse_config({"daemon": {"root": "srv", "done": "/elsewhere/done"}},
                          base_dir=tmp_path)
    d = config.daemon
    assert d.root == str(tmp_path / "srv")
    assert d.inbox == str(tmp_path / "srv" / "data" / "inbox")
    assert d.styles == str(tmp_path / "srv" / "styles")
    assert d.done == "/elsewhere/done"  # absolute folders are not moved under the root
    # and the default root is the config file's folder, as before
    assert parse_config({}, base_dir=tmp_path).daemon.inbox == str(tmp_path / "data" / "inbox")


# --------------------------------------------------------------------------- install script


def test_install_script_into_a_temporary_root(tmp_path: Path) -> None:
    """systemd/install.sh (as the README's service steps use it) lays out the root, copies the
    styles into root/styles, writes a config that passes check-config and a unit that
    `systemd-analyze verify` accepts as written."""
    from test_unit_file import analyze, parse_unit

    tool = analyze()
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "nstd").exists():
        pytest.fail(f"{venv}/bin/nstd is missing: run the tests from nstd's venv")
    root, etc, units = tmp_path / "root", tmp_path / "etc", tmp_path / "units"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    argv = ["sh", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--config-dir",
            str(etc), "--unit-dir", str(units), "--venv", str(venv), "--user", user,
            "--no-useradd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK" in result.stdout  # it ran check-config at the end

    shipped = sorted(p.name for p in (REPO / "styles").iterdir() if p.suffix == ".png")
    assert sorted(p.name for p in (root / "styles").iterdir()) == shipped  # files, not a folder
    config = load_config(etc / "config.yaml")
    for key in PATH_KEYS:
        assert root in Path(getattr(config.daemon, key)).parents, key
        if key != "styles":
            assert Path(getattr(config.daemon, key)).is_dir(), key

    unit_file = units / "nstd.service"
    unit = parse_unit(unit_file.read_text())
    assert unit["Service"]["ExecStart"][-1] == (f"{venv}/bin/nstd run --config "
                                                f"{etc / 'config.yaml'}")
    assert unit["Service"]["ReadWritePaths"] == [str(root)]
    verify = subprocess.run([tool, "verify", "--man=no", str(unit_file)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (verify.stdout + verify.stderr).splitlines()
                if "nstd.service" in line]
    assert verify.returncode == 0 and problems == [], problems

    # Again: an admin's config is kept
    (etc / "config.yaml").write_text((etc / "config.yaml").read_text() + "# edited\n")
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert (etc / "config.yaml").read_text().endswith("# edited\n")


# --------------------------------------------------------------------------- weights files


def test_a_text_file_as_weights_is_called_corrupt_naming_the_path(tmp_path: Path) -> None:
    text = tmp_path / "vgg19.pth"
    text.write_text("404 Not Found\n")
    with pytest.raises(WeightsError) as info:
        weights.load_vgg19_state_dict(text)
    message = str(info.value)
    assert str(text) in message and "not a PyTorch checkpoint" in message
    assert "Python objects" not in message


def test_a_whole_model_still_gets_the_state_dict_advice(tmp_path: Path) -> None:
    model = tmp_path / "model.pth"
    torch.save(torch.nn.Conv2d(3, 4, 3), model)
    with pytest.raises(WeightsError, match="Python objects besides tensors"):
        weights.load_vgg19_state_dict(model)


# --------------------------------------------------------------------------- CLI output


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`nstd status | head -0`: no "internal error: BrokenPipeError", no traceback."""
    config = write_config(tmp_path)
    from nstd.daemon.ledger import Ledger, ledger_path

    state = load_config(config).daemon.state
    Path(state).mkdir(parents=True)
    Ledger.open(ledger_path(state)).close()
    read, write = os.pipe()
    os.close(read)  # the reader has gone before nstd writes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "nstd", "status", "--config", str(config)],
                            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
                            env=env)
    os.close(write)
    assert result.stderr == "" and result.returncode == 0, result.stderr


def test_status_piped_into_head_exits_0_under_pipefail(tmp_path: Path) -> None:
    """`set -o pipefail; nstd status | head -1`: a reader that stops early is a normal end.
    The JSON of 3000 files waiting in the inbox is larger than a pipe's buffer, so nstd is
    still writing when `head` leaves."""
    config = write_config(tmp_path)
    from nstd.daemon.ledger import Ledger, ledger_path

    loaded = load_config(config)
    Path(loaded.daemon.state).mkdir(parents=True)
    Ledger.open(ledger_path(loaded.daemon.state)).close()
    inbox = Path(loaded.daemon.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(3000):
        (inbox / f"waiting-photo-number-{i:05d}.jpg").write_bytes(b"\xff\xd8\xff")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nstd = f"{sys.executable} -m nstd status --config {config}"
    for pipeline in (f"{nstd} | head -1", f"{nstd} --json | head -c 16"):
        result = subprocess.run(["bash", "-c", f"set -o pipefail; {pipeline}"],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0 and result.stderr == "", (pipeline, result.stderr)
        assert result.stdout, pipeline


def test_plural() -> None:
    assert [plural(n, "segment") for n in (0, 1, 2)] == ["0 segments", "1 segment",
                                                          "2 segments"]
    assert plural(1, "scene cut") == "1 scene cut" and plural(3, "pass", "passes") == "3 passes"


def test_no_user_visible_count_says_s_in_brackets() -> None:
    """Every count goes through `plural`: no "job(s)" or "file(s)" left in the code."""
    counted = re.compile(r"(?:%d|\}) [\w ]*\(s\)")  # "%d job(s)", f"{n} CUDA device(s)"
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in (REPO / "nstd").rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if counted.search(line)]
    assert offenders == []


def test_stylize_says_which_device_it_runs_on(tmp_path: Path, vgg_weights_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    photo = write_test_image(tmp_path / "photo.png", size=(24, 24), seed=1)
    style = write_test_image(tmp_path / "style.png", size=(16, 16), seed=2)
    assert main(["stylize", str(photo), "--style", str(style), "--weights",
                 str(vgg_weights_path), "--device", "cpu", "--set", "style.max_side=16",
                 "--set", "style.iterations=1", "--set", "style.coarse_iterations=0",
                 "--set", "style.min_scale_side=16"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("device: cpu (") for line in err), err


# --------------------------------------------------------------------------- nstd styles


def test_styles_lists_name_file_size_and_inbox_folder(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    styles = tmp_path / "styles"
    write_test_image(styles / "ink.jpg", size=(40, 30), seed=3)
    (tmp_path / "data" / "inbox" / "ghost").mkdir(parents=True)  # a folder without a style
    assert main(["styles", "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in data["styles"]}
    assert set(by_name) == {"ink", "mosaic"}
    ink = by_name["ink"]
    assert (ink["file"], ink["width"], ink["height"]) == ("ink.jpg", 40, 30)
    assert ink["bytes"] == (styles / "ink.jpg").stat().st_size
    assert ink["used_by"] == ["inbox/ink/"]
    assert by_name["mosaic"]["used_by"] == ["inbox/ (daemon.default_style)", "inbox/mosaic/"]
    assert any("inbox/ghost/" in p for p in data["problems"])
    assert main(["styles", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "40x30" in text and "inbox/ink/" in text and "ghost" in text


def test_styles_lists_what_the_daemon_would_take(tmp_path: Path) -> None:
    """Two images with one name: the daemon refuses that style, and so does the list."""
    config = load_config(write_config(tmp_path))
    write_test_image(tmp_path / "styles" / "mosaic.jpg", size=(8, 8))
    _, found, _ = list_styles(config)
    assert [s.name for s in found] == ["mosaic"]
    assert found[0].problem is not None and "ambiguous" in found[0].problem
    shutil.rmtree(tmp_path / "styles")
    (tmp_path / "styles").mkdir()
    _, found, problems = list_styles(config)
    assert found == [] and any("default_style" in p for p in problems)


# --------------------------------------------------------------------------- the page's JSON


def test_status_json_gives_the_busy_workers_device(tmp_path: Path) -> None:
    """/api/status.json names the device the worker said it runs on ("ready"), also on a CPU
    machine, where the worker's plan pins no CUDA device."""
    from nstd.testing.stepped import SteppedSite
    from nstd.web.model import snapshot

    rig = SteppedSite(tmp_path)
    seen: list[dict] = []
    rig.runner.action = lambda request, kwargs: seen.append(snapshot(rig.daemon)["workers"][0])
    rig.start()
    rig.queue_files("a.png")
    rig.step()
    assert rig.ran == ["a.png"]
    busy = seen[0]
    assert busy["state"] == "busy" and busy["source"] == "a.png"
    assert busy["device"] == "inline"  # what nstd.daemon.inline.InlineWorker says at "ready"

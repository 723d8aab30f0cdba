"""systemd/nstd.service against the code it starts, and `systemd-analyze verify` for real.

Each check ties a unit setting to what nstd does: the command line parses with nstd's own
parser, a configuration error's exit status is not restarted, the watchdog interval the daemon
derives from ``WatchdogSec`` leaves room between pings, every folder the daemon writes (placed
as the README says) is writable under ``ProtectSystem=strict``, and the NVIDIA devices are
reachable. ``systemd-analyze`` is installed by ``.ci/run``: under ``CI=true`` its absence is a
failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from nstd.cli.main import EXIT_USAGE, build_parser
from nstd.config import PATH_KEYS, parse_config
from nstd.daemon.notify import watchdog_interval

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "nstd.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys may repeat, e.g. DeviceAllow)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):  # continuation line
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_SPAN_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0,
               "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
               "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}


def timespan(value: str) -> float:
    """A systemd time span in seconds: "120", "2min", "1min 30s" (systemd.time(7))."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip().lower())
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s+", "", value.lower()), value
    return sum(float(number) * _SPAN_UNITS[unit or "s"] for number, unit in parts)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]  # the last assignment wins in systemd


def test_timespan_parser() -> None:
    assert timespan("120") == 120 and timespan("2min") == 120 and timespan("1min 30s") == 90
    assert timespan("500ms") == 0.5


def test_exec_start_is_nstd_run_with_its_config(unit) -> None:
    """The binary is nstd's console script and the arguments parse with nstd's parser."""
    argv = one(unit, "Service", "ExecStart").split()
    # pyproject's [project.scripts] (read as text: tomllib needs Python 3.11)
    scripts = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    name = re.escape(PurePosixPath(argv[0]).name)
    assert re.search(rf'^{name}\s*=\s*"nstd\.cli\.main:main"', scripts, re.M), argv[0]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config is not None and args.config.is_absolute()  # no dependence on the cwd


def test_ready_notifications_and_restart_policy(unit) -> None:
    # nstd sends READY=1 itself (tests/test_notify.py): only Type=notify waits for it, and
    # only the main process (the supervisor) sends, so nothing else may.
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    # A crash is restarted; a configuration error (nstd's usage exit status) is not, since
    # restarting cannot fix it and would loop.
    assert one(unit, "Service", "Restart") in {"on-failure", "on-abnormal", "always"}
    assert str(EXIT_USAGE) in one(unit, "Service", "RestartPreventExitStatus").split()
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_watchdog_is_armed_and_pinged_well_within_it(unit) -> None:
    """The interval nstd derives from the unit's WatchdogSec (systemd passes it as
    $WATCHDOG_USEC) leaves at least one missed ping of slack before systemd kills it."""
    watchdog = timespan(one(unit, "Service", "WatchdogSec"))
    assert watchdog > 0, "WatchdogSec=0 disables the watchdog: a hung daemon is never restarted"
    every = watchdog_interval({"WATCHDOG_USEC": str(round(watchdog * 1_000_000)),
                               "WATCHDOG_PID": str(os.getpid())})
    assert every is not None and 0 < every <= watchdog / 2, (every, watchdog)
    # Stopping must give the daemon longer than one watchdog period to finish a frame.
    assert timespan(one(unit, "Service", "TimeoutStopSec")) >= watchdog


def writable_paths(unit) -> list[PurePosixPath]:
    service = unit["Service"]
    paths = [PurePosixPath(p.lstrip("-+")) for v in service.get("ReadWritePaths", [])
             for p in v.split()]
    # StateDirectory= is writable under ProtectSystem=strict, created for the service user.
    paths += [PurePosixPath("/var/lib") / d for v in service.get("StateDirectory", [])
              for d in v.split()]
    return paths


def covered(path: PurePosixPath, roots: list[PurePosixPath]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def test_every_folder_the_daemon_writes_is_writable(unit) -> None:
    """The README's service install puts every `daemon` folder under /var/lib/nstd and the
    config in /etc/nstd; under ProtectSystem=strict each must be inside ReadWritePaths (or the
    StateDirectory), and so must the weights download (TORCH_HOME) and HOME."""
    assert one(unit, "Service", "ProtectSystem") == "strict"  # else the rest proves nothing
    roots = writable_paths(unit)
    state_dir = PurePosixPath("/var/lib") / one(unit, "Service", "StateDirectory")
    argv = one(unit, "Service", "ExecStart").split()
    config_dir = Path(argv[argv.index("--config") + 1]).parent
    # systemd/install.sh writes the shipped config with daemon.root set to the state folder
    config = parse_config({"daemon": {"root": str(state_dir)}}, base_dir=config_dir)
    for key in PATH_KEYS:
        folder = PurePosixPath(getattr(config.daemon, key))
        assert covered(folder, roots), (key, folder, roots)
        # The mount must be up before the first scan (an empty mount point looks empty).
        mounts = [PurePosixPath(p) for v in unit["Unit"].get("RequiresMountsFor", [])
                  for p in v.split()]
        assert covered(folder, mounts), (key, folder, mounts)
    env = dict(item.split("=", 1) for v in unit["Service"]["Environment"] for item in v.split())
    for name in ("TORCH_HOME", "HOME"):
        assert covered(PurePosixPath(env[name]), roots), (name, env[name], roots)


def test_gpu_devices_reachable_and_cuda_breakers_absent(unit) -> None:
    service = unit["Service"]
    allowed = {v.split()[0]: v.split()[1] if len(v.split()) > 1 else "rwm"
               for v in service["DeviceAllow"]}
    # /dev/nvidia0..N (any GPU count), the control node and unified memory, read-write.
    for device in ("char-nvidia-frontend", "/dev/nvidiactl", "/dev/nvidia-uvm"):
        assert device in allowed and "r" in allowed[device] and "w" in allowed[device], device
    # Both break CUDA: PrivateDevices hides /dev/nvidia*, MemoryDenyWriteExecute blocks the
    # driver's JIT; ProcSubset=pid hides /proc/driver/nvidia.
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset"):
        assert service.get(key, ["false"])[-1] in {"false", "no", "0", "all"}, key


def analyze() -> str | None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze is missing: .ci/run installs it (package systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


def verify(tool: str, text: str, folder: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports for ``text`` as a unit named nstd.service."""
    # verify insists that ExecStart's binary exists; /opt/nstd is where an install puts it,
    # not this checkout, so check a copy that points at a binary that exists here.
    text = text.replace("ExecStart=/opt/nstd/.venv/bin/nstd",
                        f"ExecStart={shutil.which('true') or '/bin/true'}")
    copy = folder / "nstd.service"
    copy.write_text(text)
    result = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit 0), so any line about the unit is
    # a problem.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "nstd.service" in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    return problems


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = analyze()
    assert verify(tool, UNIT.read_text(), tmp_path) == []


def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported."""
    tool = analyze()
    text = UNIT.read_text().replace("WatchdogSec=", "WatchdogSek=").replace(
        "Type=notify", "Type=notfy")
    problems = verify(tool, text, tmp_path)
    assert any("WatchdogSek" in p for p in problems), problems
    assert any("notfy" in p for p in problems), problems

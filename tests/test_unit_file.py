"""systemd/nstd.service: the keys the daemon relies on, and `systemd-analyze verify` if present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "nstd.service"


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


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]  # the last assignment wins in systemd


def test_service_type_restart_and_timeouts(unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "2" in one(unit, "Service", "RestartPreventExitStatus").split()
    assert int(one(unit, "Service", "WatchdogSec")) >= 60
    assert int(one(unit, "Service", "TimeoutStopSec")) >= 120
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_runs_as_dedicated_user_with_consistent_paths(unit) -> None:
    assert one(unit, "Service", "User") == "nstd"
    assert one(unit, "Service", "Group") == "nstd"
    exec_start = one(unit, "Service", "ExecStart").split()
    assert exec_start[0] == "/opt/nstd/.venv/bin/nstd"
    assert exec_start[1] == "run"
    assert exec_start[exec_start.index("--config") + 1] == "/etc/nstd/config.yaml"
    assert "/var/lib/nstd" in one(unit, "Service", "ReadWritePaths").split()
    assert one(unit, "Service", "StateDirectory") == "nstd"
    env = " ".join(unit["Service"]["Environment"])
    assert "TORCH_HOME=/var/lib/nstd/torch" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_hardening(unit) -> None:
    expected = {
        "ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true",
        "NoNewPrivileges": "true", "DevicePolicy": "closed", "ProtectKernelTunables": "true",
        "ProtectControlGroups": "true", "LockPersonality": "true", "RestrictRealtime": "true",
        "SystemCallArchitectures": "native", "UMask": "0027",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_gpu_devices_allowed_and_cuda_breakers_absent(unit) -> None:
    allowed = {v.split()[0] for v in unit["Service"]["DeviceAllow"]}
    for device in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                   "char-nvidia-frontend", "char-nvidia-uvm"):
        assert device in allowed, device
    # Both break CUDA: PrivateDevices hides /dev/nvidia*, MemoryDenyWriteExecute blocks JIT.
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset"):
        assert key not in unit["Service"], key


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's binary exists; /opt/nstd is where an install puts it,
    # not this checkout, so check a copy that points at a binary that exists here.
    text = UNIT.read_text().replace("ExecStart=/opt/nstd/.venv/bin/nstd",
                                    f"ExecStart={shutil.which('true') or '/bin/true'}")
    copy = tmp_path / "nstd.service"
    copy.write_text(text)
    result = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit 0), so any output is a failure.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "nstd.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr

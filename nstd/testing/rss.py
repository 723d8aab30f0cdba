"""Resident memory of this process, and its high-water mark that can be reset (Linux /proc).

Torch-free, so that a probe measuring a decode does not pay for importing torch.
"""

from __future__ import annotations


def current_bytes() -> int:
    """Resident set size of this process now."""
    return _status_kb("VmRSS") * 1024


def peak_bytes() -> int:
    """Highest resident set size since the process started or `reset_peak`."""
    return _status_kb("VmHWM") * 1024


def reset_peak() -> None:
    """Start the high-water mark again from the current resident size."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def _status_kb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")

"""What a job is, shared by image and video work: the request, the report, the callbacks a
runner takes, and the tensor <-> array conversions at the engine's edge.

Nothing here reads files or knows the engine: `nstd.pipeline` (images) and
`nstd.temporal.frames` (videos) both build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nstd.config import Config
from nstd.progress import JobProgress

ProgressCallback = Callable[[JobProgress], None]
StopCheck = Callable[[], bool]
Heartbeat = Callable[[], None]


@dataclass(frozen=True)
class JobRequest:
    """Everything one stylization job needs besides the engine."""

    source: Path
    output: Path
    styles: tuple[Path, ...]
    blend: tuple[float, ...]
    config: Config
    overwrite: bool = False
    work_dir: Path | None = None  # videos: where stored frames live (default: next to output)
    restart: bool = False  # videos: discard stored frames instead of resuming
    # videos: stored frames made with other settings or input are discarded (the daemon)
    # instead of refused with StaleFramesError (the CLI, which asks for --restart)
    replace_stale: bool = False
    masks: tuple[Path, ...] = ()  # one greyscale style mask per style, or none


@dataclass
class JobReport:
    """What a finished job reports (`--json` prints `as_dict()`)."""

    kind: str
    output: Path
    seconds: float
    iterations: int
    initial_loss: float
    final_loss: float
    losses: dict[str, float]
    width: int
    height: int
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "output": str(self.output),
            "seconds": round(self.seconds, 3),
            "iterations": self.iterations,
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "losses": self.losses,
            "width": self.width,
            "height": self.height,
            "device": self.device,
        }
        data.update(self.extra)
        return data


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 or uint8 RGB -> (1, 3, H, W) float32 in [0, 1] (a copy)."""
    array = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)


def to_array(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) float32 in [0, 1] on the CPU."""
    return image.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()

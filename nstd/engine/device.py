"""Where the engine runs: the device from `model.device`, and the options that apply there."""

from __future__ import annotations

import torch

from nstd.config import ModelConfig
from nstd.errors import ConfigError
from nstd.text import plural


def resolve_device(spec: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; ConfigError if CUDA is asked for
    but missing."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"model.device: {spec} requested but CUDA is not available "
                              "(no NVIDIA GPU/driver, or a CPU-only PyTorch); use auto or cpu")
        index = int(spec[5:]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"model.device: {spec} does not exist; this machine has "
                              f"{plural(torch.cuda.device_count(), 'CUDA device')}")
        return torch.device("cuda", index)
    raise ConfigError(f"model.device: must be auto, cpu, cuda or cuda:N, got {spec!r}")



def device_options(model: ModelConfig, device: torch.device) -> dict[str, object]:
    """Stylizer options from the model config: the memory budget, and those that apply on
    CUDA only (slower or unsupported on the CPU): bf16 autocast, channels_last, compile."""
    on_cuda = device.type == "cuda"
    return {"precision": model.precision if on_cuda else "fp32",
            "channels_last": model.channels_last and on_cuda,
            "compile_network": model.compile and on_cuda,
            "max_memory_gb": model.max_memory_gb,
            "auto_memory_share": model.auto_memory_share}

"""The memory budget of one optimization, and the tile size that keeps under it.

What a budget covers (`model.max_memory_gb`): the memory one image's optimization takes on
top of the loaded network and the runtime, in two parts:

- image-sized state, which no tiling can shrink: the optimized image, its gradient, the best
  image so far, the L-BFGS history (2 x history image-sized vectors), the content image;
- the network's activations kept for the backward pass, about 2.5 kB per input pixel for
  full-width VGG-19 up to relu5_1 (measured on the CPU: 2.2-2.6 kB), i.e. ~2.5 GB per
  megapixel. Tiling bounds this part by the tile's size instead of the image's.

The estimates are deliberately on the high side (a tile a little smaller than needed costs a
little speed; one a little larger costs the job).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

from nstd.engine.features import VGGFeatures
from nstd.engine.tiling import halo_pixels, stride_of
from nstd.layers import LAYER_INDEX, LAYER_NAMES

log = logging.getLogger(__name__)

GIB = 1024**3
# Margin over the sum of the activations autograd keeps: the backward pass holds a few
# gradient buffers of the widest layers at once, and the allocator rounds up.
_ACTIVATION_MARGIN = 1.5
# Image-sized float32 tensors per channel besides the L-BFGS history: image, gradient, best
# image, line-search base point and direction, the tiled gradient sum, content, chroma...
_IMAGE_COPIES = 12


def activation_bytes_per_pixel(features: VGGFeatures, layers: Iterable[str],
                               element_bytes: int = 4) -> float:
    """Bytes of activations per input pixel that one forward + backward pass keeps, for
    the network up to the deepest of `layers` (estimate; see the module docstring)."""
    deepest = max(layers, key=LAYER_INDEX.__getitem__)
    outputs, widest = 0.0, 0
    channels = 3
    for name in LAYER_NAMES[: LAYER_INDEX[deepest] + 1]:
        stride = stride_of(name)
        if name.startswith("conv"):
            channels = features.widths[name]
        outputs += channels / stride**2
        if stride == 1:
            widest = max(widest, channels)
    # Input-sized tensors (the tile's copy, the normalized input, their gradients, the
    # gradient sum: ~16 x 3 channels) and two gradient buffers of the widest full-resolution
    # layer during the backward pass.
    return element_bytes * _ACTIVATION_MARGIN * (outputs + 2 * widest + 16 * 3)


def image_state_bytes_per_pixel(channels: int, lbfgs_history: int,
                                content_channels: float = 0.0) -> float:
    """Bytes per output pixel of the state that lives at the image's size whatever the tiles:
    `channels` 3 (1 with preserve_color), the L-BFGS history (0 for Adam), and the content
    target features (`content_channels` per input pixel: C / stride^2 of the content layer)."""
    return 4.0 * (channels * (_IMAGE_COPIES + 2 * lbfgs_history) + 3 * 2 + content_channels)


def available_bytes(device: torch.device) -> int:
    """Memory free for this process now: free CUDA memory on a GPU (plus what PyTorch's
    caching allocator holds unused: the previous frame's activations would otherwise count as
    taken), MemAvailable of /proc/meminfo on the CPU (0 when it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resolve_budget(max_memory_gb: float | str | None, share: float,
                   device: torch.device) -> int | None:
    """Bytes one optimization may use: a number of GiB as given, 'auto' = `share` of what
    `available_bytes` reports, None = no budget (never tile)."""
    if max_memory_gb is None:
        return None
    if max_memory_gb == "auto":
        free = available_bytes(device)
        return int(share * free) if free > 0 else None
    return int(float(max_memory_gb) * GIB)


def core_side_for(budget: int, size: tuple[int, int], per_pixel: float, fixed_per_pixel: float,
                  layers: Iterable[str]) -> int | None:
    """Largest tile core side (input pixels) whose box's activations fit in what `budget`
    (bytes) leaves after the image-sized state; None when the whole image fits untiled.

    Never below `min_core_side` (twice the halo, 160 pixels for relu5_1): a tile's box is
    (core + 2 halo)^2, so smaller cores spend most of their work on halos (a 16-pixel core
    would cost 121 times its own area). A budget too small even for that is logged and the
    smallest tiles are used (the job may then run out of memory).
    """
    layers = tuple(layers)
    pixels = size[0] * size[1]
    left = budget - fixed_per_pixel * pixels
    if per_pixel * pixels <= left:
        return None
    halo = halo_pixels(layers)
    box_side = math.isqrt(max(0, int(left / per_pixel)))
    core = box_side - 2 * halo
    align = max(stride_of(layer) for layer in layers)
    smallest = min_core_side(layers)
    if core < smallest:
        log.warning("the memory budget (%.2f GiB) is too small for a %dx%d image even with the "
                    "smallest tiles; using them anyway (raise model.max_memory_gb)",
                    budget / GIB, size[1], size[0])
        return smallest
    return core // align * align


def min_core_side(layers: Iterable[str]) -> int:
    """The smallest tile core the budget may choose: twice the halo (see `core_side_for`)."""
    return 2 * halo_pixels(layers)

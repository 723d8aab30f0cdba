"""VGG-19 layer names, in the order of torchvision's `vgg19().features`.

Kept free of torch so that the config can validate layer names without importing it.
The position of a name in `LAYER_NAMES` is its index in torchvision's `features` module;
nothing else in nstd uses bare indices.
"""

from __future__ import annotations

# Convolutions per block in VGG-19 (configuration "E" of Simonyan & Zisserman).
BLOCK_SIZES: tuple[int, ...] = (2, 2, 4, 4, 4)


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(BLOCK_SIZES, start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _names()
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(LAYER_NAMES)}

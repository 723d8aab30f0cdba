"""Tile geometry for exact tiled evaluation of VGG-19 features (Galerne et al. 2022).

A tile is a *core* (the input pixels whose features it owns) plus a *halo* of context on
every side that is inside the image. Two facts make a tile's features equal the whole
image's on its core, for every layer down to the deepest one used:

- alignment: every core and tile edge that is not an image edge is a multiple of the total
  downsampling factor of the deepest layer (16 below pool4), so each 2x2 pooling window of
  the tile is a window of the whole image;
- halo: a 3x3 zero-padded convolution next to a tile edge that is not an image edge sees
  zeros where the image has pixels; the error creeps inwards one position per convolution
  and is halved (rounded up) by each pooling. `halo_pixels` follows it layer by layer and
  returns the input margin that keeps every used layer's core free of it.

The cores partition the image, so at every layer each feature position belongs to exactly
one tile: sums over positions (Grams, the content loss) add up over tiles exactly.

Geometry only: plain integers, no tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from nstd.layers import LAYER_INDEX, LAYER_NAMES


def stride_of(layer: str) -> int:
    """Downsampling factor of a layer's output: 1 for block 1 convs, 2 after pool1, ...,
    32 for pool5."""
    pools = sum(1 for name in LAYER_NAMES[: LAYER_INDEX[layer] + 1] if name.startswith("pool"))
    return 2**pools


def alignment(layers: Iterable[str]) -> int:
    """Input pixels that tile offsets must be multiples of: the deepest layer's stride."""
    return max(stride_of(layer) for layer in layers)


def halo_pixels(layers: Iterable[str]) -> int:
    """Input margin (pixels, a multiple of `alignment`) beyond which a tile edge cannot
    change any feature of `layers` on the tile's core.

    Counted, not assumed: `margin` is how many positions next to a tile edge are wrong at
    the current layer (+1 per 3x3 convolution, ceil(m / 2) per 2x2 pooling); a layer needs
    margin x stride input pixels. relu5_1 gives 80, relu4_2 40.
    """
    wanted = set(layers)
    deepest = max(wanted, key=LAYER_INDEX.__getitem__)
    margin, stride, need = 0, 1, 0
    for name in LAYER_NAMES[: LAYER_INDEX[deepest] + 1]:
        if name.startswith("conv"):
            margin += 1
        elif name.startswith("pool"):
            margin, stride = math.ceil(margin / 2), stride * 2
        if name in wanted:
            need = max(need, margin * stride)
    align = alignment(wanted)
    return math.ceil(need / align) * align


@dataclass(frozen=True)
class Tile:
    """One tile: input rows/columns [top, bottom) x [left, right) of the core, and of the
    box (core plus halo, clipped to the image) that is fed to the network."""

    core: tuple[int, int, int, int]  # top, bottom, left, right (input pixels)
    box: tuple[int, int, int, int]

    def layer_slices(self, stride: int, full: tuple[int, int]) -> tuple[slice, slice,
                                                                           slice, slice]:
        """(rows, cols) of this tile's core at a layer of `stride`, first in the tile's own
        feature map, then in the whole image's (of input size `full` = (H, W)).

        A core that ends at the image edge ends at the layer's last position (pooling
        floors: H // stride); the others end on a multiple of the stride.
        """
        (ct, cb, cl, cr), (bt, _, bl, _) = self.core, self.box
        h, w = full
        gt, gl = ct // stride, cl // stride
        gb = h // stride if cb == h else cb // stride
        gr = w // stride if cr == w else cr // stride
        ot, ol = bt // stride, bl // stride
        return (slice(gt - ot, gb - ot), slice(gl - ol, gr - ol),
                slice(gt, gb), slice(gl, gr))


def _cuts(length: int, core: int, align: int) -> list[tuple[int, int]]:
    """[start, end) cores along one axis: `core` long (a multiple of `align`), the last one
    taking the rest; a rest shorter than one alignment step joins the previous core."""
    starts = list(range(0, length, core))
    bounds = [*starts, length]
    if len(bounds) > 2 and length - bounds[-2] < align:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def plan_tiles(size: tuple[int, int], core_side: int, layers: Iterable[str],
               halo: int | None = None) -> list[Tile]:
    """Tiles covering an image of `size` (H, W) whose cores are at most `core_side` pixels
    (rounded down to the alignment, at least one step) and whose halos suit `layers`
    (`halo` overrides that width: tests show that a narrower one is not exact).

    One tile (the whole image) when it fits.
    """
    layers = tuple(layers)
    align = alignment(layers)
    halo = halo_pixels(layers) if halo is None else halo
    core = max(align, core_side // align * align)
    h, w = size
    tiles = []
    for top, bottom in _cuts(h, core, align):
        for left, right in _cuts(w, core, align):
            box = (max(0, top - halo), min(h, bottom + halo),
                   max(0, left - halo), min(w, right + halo))
            tiles.append(Tile((top, bottom, left, right), box))
    return tiles


def largest_box_side(core_side: int, layers: Iterable[str]) -> int:
    """Side of the largest box a core of `core_side` pixels needs (core plus two halos)."""
    layers = tuple(layers)
    align = alignment(layers)
    return max(align, core_side // align * align) + 2 * halo_pixels(layers)

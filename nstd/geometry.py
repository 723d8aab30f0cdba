"""Picture geometry shared by the layers above (media, engine, daemon): aspect ratios."""

from __future__ import annotations

# Relative difference of aspect ratios accepted between two pictures of the same scene (a
# style mask saved at another resolution rounds its sides differently).
ASPECT_TOLERANCE = 0.02


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether sizes ``a`` and ``b`` (H, W) have the same aspect ratio within
    `ASPECT_TOLERANCE` of ``b``'s."""
    ratio_a, ratio_b = a[1] / a[0], b[1] / b[0]
    return abs(ratio_a - ratio_b) <= ASPECT_TOLERANCE * ratio_b

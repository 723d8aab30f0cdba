"""A bounded summary of a long series (a video's frame losses for the status page's sparkline).

A video may have hundreds of thousands of frames, and its series travels to the status page
every second: `Series` keeps at most `points` values, each the mean of an equal run of
consecutive samples. When it fills up, neighbours are merged pairwise and each value then
covers twice as many samples, so memory and message size stay fixed and the whole video so
far is always covered.
"""

from __future__ import annotations


class Series:
    """Means of equal runs of consecutive samples, at most `points` of them."""

    def __init__(self, points: int = 120) -> None:
        if points < 2 or points % 2:
            raise ValueError(f"points must be an even number >= 2, got {points}")
        self.points = points
        self.per_point = 1  # samples each full value covers
        self._values: list[float] = []
        self._partial = 0.0
        self._count = 0  # samples in the partial value

    def add(self, value: float) -> None:
        self._partial += value
        self._count += 1
        if self._count == self.per_point:
            self._values.append(self._partial / self._count)
            self._partial, self._count = 0.0, 0
            if len(self._values) == self.points:
                pairs = zip(self._values[0::2], self._values[1::2], strict=True)
                self._values = [(a + b) / 2 for a, b in pairs]
                self.per_point *= 2

    def values(self) -> list[float]:
        """The means so far, oldest first (the last one may cover fewer samples)."""
        tail = [self._partial / self._count] if self._count else []
        return self._values + tail


class IndexedSeries:
    """Means of a series whose samples arrive out of order (a video's frames made by several
    Ray actors at once): one value per filled range of `points` equal ranges of the indices
    0 .. total - 1, in index order. Ranges with no sample yet are left out, so the line runs
    over the frames made so far; memory stays at `points` values whatever the total."""

    def __init__(self, total: int, points: int = 120) -> None:
        if points < 1:
            raise ValueError(f"points must be >= 1, got {points}")
        self.per_point = max(1, -(-total // points))  # ceil: at most `points` ranges
        self._sums: dict[int, float] = {}
        self._counts: dict[int, int] = {}

    def add(self, index: int, value: float) -> None:
        key = index // self.per_point
        self._sums[key] = self._sums.get(key, 0.0) + value
        self._counts[key] = self._counts.get(key, 0) + 1

    def values(self) -> list[float]:
        """The mean of each range that has samples, lowest indices first."""
        return [self._sums[k] / self._counts[k] for k in sorted(self._sums)]

"""Honest ETAs: remaining time from what the remaining work is made of, or "unknown".

A plain rate (elapsed / units done × units left) is wrong whenever units differ in cost:

- **video**: the first frame of a shot starts cold (coarse-to-fine, `style.iterations`), the
  rest start warm (`video.frame_iterations`, often 10-30× cheaper). Extrapolating from the
  cold frame was 8× too long. `FrameEta` costs cold and warm frames apart: the plan knows
  which frames start a shot, each computed frame's wall time is recorded under its kind, and
  the remaining time is (cold frames left × mean cold frame) + (warm frames left × mean warm
  frame). The mean is a running one, so warm frames whose iteration count varies (early
  stopping, a quality target) are priced by what they took, not by a budget.
- **image**: coarse scales have a quarter of the pixels of the next; the overall rate ran
  short. `IterationEta` uses the measured time per iteration of the current scale, and
  prices the iterations of larger scales to come by their pixel count.

Where a kind of work is still ahead but none of it was measured yet (no warm frame done, the
first iteration of a scale) the answer is None, shown as "ETA unknown": a figure likely off
by more than 3× is worse than none.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence


class FrameEta:
    """The remaining time of a video's frames ``first`` .. ``frame_count - 1``.

    Call `loaded` for a frame taken from the store (it costs nothing and restarts the
    interval) and `computed` for a frame made now; `remaining` is then the ETA in seconds, or
    None while a kind of frame that is still ahead has not been measured.
    """

    def __init__(self, frame_count: int, cold_frames: Iterable[int], now: float,
                 first: int = 0) -> None:
        self.frame_count = frame_count
        self.cold = sorted(set(int(i) for i in cold_frames) | ({first} if frame_count else set()))
        self.next = first  # the first frame not handled yet
        self.since = now  # when work on the next frame began
        self.cost: dict[bool, list[float]] = {True: [], False: []}  # cold? -> [seconds]

    def loaded(self, index: int, now: float) -> None:
        """Frame ``index`` came from the store (a resumed run)."""
        self.next, self.since = index + 1, now

    def computed(self, index: int, cold: bool, now: float) -> None:
        """Frame ``index`` was made; ``cold``: it started cold (a shot start, or a frame the
        flow could not follow)."""
        self.cost[cold].append(max(0.0, now - self.since))
        self.next, self.since = index + 1, now

    def mean(self, cold: bool) -> float | None:
        """Mean wall seconds of the frames of one kind made so far; None before the first."""
        seen = self.cost[cold]
        return sum(seen) / len(seen) if seen else None

    def remaining(self) -> float | None:
        """Seconds until the last frame is made; None when it cannot be said honestly."""
        left = max(0, self.frame_count - self.next)
        cold_left = len(self.cold) - bisect.bisect_left(self.cold, self.next)
        cold_left = min(cold_left, left)
        total = 0.0
        for cold, count in ((True, cold_left), (False, left - cold_left)):
            if count == 0:
                continue
            mean = self.mean(cold)
            if mean is None:
                return None
            total += count * mean
        return total


class IterationEta:
    """The remaining time of one image's optimization, from ``plan`` (``[((height, width),
    iterations)]`` from coarse to full size, as `nstd.engine.stylizer.Stylizer.plan` gives).

    Call `update` with each reported iteration (1-based, over all scales) and its scale; it
    returns the ETA in seconds, or None until two iterations of the current scale were seen.
    Early stopping ends a scale sooner than planned: the ETA then was an overestimate.
    """

    def __init__(self, plan: Sequence[tuple[tuple[int, int], int]]) -> None:
        self.plan = [((int(h), int(w)), int(n)) for (h, w), n in plan]
        self.scale = -1
        self.base = 0  # iterations done before the current scale began
        self.first: tuple[int, float] | None = None  # (iteration, time) first seen at this scale
        self.last = 0
        self.per_iteration: float | None = None

    def update(self, iteration: int, scale_index: int, now: float) -> float | None:
        if scale_index != self.scale:
            self.scale, self.base = scale_index, self.last
            self.first, self.per_iteration = (iteration, now), None
        elif self.first is not None and iteration > self.first[0] and now > self.first[1]:
            # Reports may come in bursts (CUDA: read a few iterations late): measure between
            # distinct times only.
            self.per_iteration = (now - self.first[1]) / (iteration - self.first[0])
        self.last = iteration
        if self.per_iteration is None or not 0 <= scale_index < len(self.plan):
            return None
        (h, w), planned = self.plan[scale_index]
        left = max(0, planned - (iteration - self.base)) * self.per_iteration
        for (h2, w2), later in self.plan[scale_index + 1:]:
            # A larger scale costs about its pixel count (the network's work is per pixel);
            # at small sizes fixed costs weigh more, so this errs long, by under 2x.
            left += later * self.per_iteration * (h2 * w2) / max(1, h * w)
        return left

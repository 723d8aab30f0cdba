"""The order a job's units are queued in, so that the last actor finishes as early as it can.

The pool is list scheduling: one queue, and each actor that comes free takes the next unit.
With that, "longest first" (LPT) is the classic order, and it is good when every actor gets
many units. A short clip on many GPUs is the opposite case: 20 shots of 8-24 frames on 8
actors is 2-3 units each, and LPT's packing then leaves actors idle at the end
(bench/scaling.py: LPT finishes at 46 frames where 42 are possible, efficiency 0.90 at best).

So the order is planned: units are first packed into one bin per actor (LPT, then moves and
swaps out of the fullest bin while they shorten it: the usual local search for multiway
partitioning), then the queue order that makes list scheduling reproduce that packing is read
off by simulating it. The queue stays one queue: an actor that is slower, dies or is busy with
another job simply takes less, exactly as before; only the order changed.

Costs are in frames; each unit also costs ``unit_cost`` frames for its start (the Ray call,
the seek and the decode to its first frame: about 0.1 s against simulated 200 ms frames in
bench/scaling.py, hence the default 0.5).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

SEARCH_SECONDS = 0.2  # the local search's time limit: planning must not show up in the job
MAX_SEARCHED_UNITS = 400  # beyond this LPT's packing is already within a few % of the best


def dispatch_order(lengths: Sequence[int], workers: int, *, unit_cost: float = 0.5) -> list[int]:
    """The indices of ``lengths`` in the order to queue them for ``workers`` actors.

    Never worse than longest first under the same model (equal actors, all free at once,
    every unit costing its length + ``unit_cost``).
    """
    count = len(lengths)
    lpt = sorted(range(count), key=lambda i: (-lengths[i], i))
    if workers <= 1 or count <= workers:
        return lpt
    costs = [float(n) + unit_cost for n in lengths]
    bins = _lpt_bins(lpt, costs, workers)
    if count <= MAX_SEARCHED_UNITS:
        _improve(bins, costs, time.monotonic() + SEARCH_SECONDS)
    order = _list_order(bins, costs)
    if makespan(order, costs, workers) > makespan(lpt, costs, workers):
        return lpt  # (ties in the simulation can spoil a packing; never hand out worse)
    return order


def makespan(order: Sequence[int], costs: Sequence[float], workers: int) -> float:
    """When the last of ``workers`` equal actors finishes, taking units in ``order``."""
    free = [0.0] * workers
    for index in order:
        heapq.heappush(free, heapq.heappop(free) + costs[index])
    return max(free)


def _lpt_bins(lpt: list[int], costs: Sequence[float], workers: int) -> list[list[int]]:
    loads = [(0.0, k) for k in range(workers)]
    bins: list[list[int]] = [[] for _ in range(workers)]
    for index in lpt:
        load, k = heapq.heappop(loads)
        bins[k].append(index)
        heapq.heappush(loads, (load + costs[index], k))
    return bins


def _improve(bins: list[list[int]], costs: Sequence[float], deadline: float) -> None:
    """Move or swap units out of the fullest bin while that lowers the pair's larger load."""
    loads = [sum(costs[i] for i in b) for b in bins]
    while time.monotonic() < deadline:
        full = max(range(len(bins)), key=lambda k: loads[k])
        best: tuple[float, int, int | None, int | None] | None = None  # (new max, bin, a, b)
        for other in range(len(bins)):
            if other == full:
                continue
            for a in bins[full]:
                for b in [None, *bins[other]]:
                    delta = costs[a] - (costs[b] if b is not None else 0.0)
                    if delta <= 0:
                        continue
                    worst = max(loads[full] - delta, loads[other] + delta)
                    if worst < loads[full] - 1e-9 and (best is None or worst < best[0]):
                        best = (worst, other, a, b)
        if best is None:
            return
        _, other, a, b = best
        assert a is not None
        bins[full].remove(a)
        bins[other].append(a)
        delta = costs[a]
        if b is not None:
            bins[other].remove(b)
            bins[full].append(b)
            delta -= costs[b]
        loads[full] -= delta
        loads[other] += delta


def _list_order(bins: list[list[int]], costs: Sequence[float]) -> list[int]:
    """The queue order under which list scheduling gives each actor one bin's units.

    Each bin runs longest first; the actor that comes free first takes the next queued unit,
    so the queue is the bins' units in the order their actors come free.
    """
    lanes = [sorted(b, key=lambda i: -costs[i]) for b in bins if b]
    events = [(0.0, k, 0) for k in range(len(lanes))]
    heapq.heapify(events)
    order: list[int] = []
    while events:
        at, k, position = heapq.heappop(events)
        index = lanes[k][position]
        order.append(index)
        if position + 1 < len(lanes[k]):
            heapq.heappush(events, (at + costs[index], k, position + 1))
    return order

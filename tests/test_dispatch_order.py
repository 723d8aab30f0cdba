"""The queue order of a job's units (`nstd.cluster.schedule`): the last actor done early."""

from __future__ import annotations

import random

from nstd.cluster.schedule import dispatch_order, makespan

# The shot lengths of bench/scaling.py's 20-shot clip (seed 0).
SHOTS = [22, 18, 16, 12, 13, 8, 9, 8, 10, 21, 19, 23, 16, 18, 24, 20, 18, 17, 17, 23]


def longest_first(lengths: list[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def test_the_order_is_every_unit_once():
    order = dispatch_order(SHOTS, 8)
    assert sorted(order) == list(range(len(SHOTS)))


def test_few_units_per_actor_finish_near_the_lower_bound_where_longest_first_does_not():
    costs = [float(n) for n in SHOTS]
    lower = sum(costs) / 8  # 41.5 frames: every actor busy to the end
    planned = makespan(dispatch_order(SHOTS, 8, unit_cost=0.0), costs, 8)
    lpt = makespan(longest_first(SHOTS), costs, 8)
    assert lpt >= 46  # longest first leaves actors idle for 4+ frames at the end
    assert planned <= 42  # (20 whole shots cannot do better than 42: 41.5 rounded up)
    assert planned >= lower


def test_it_is_never_worse_than_longest_first():
    rng = random.Random(7)
    for _ in range(200):
        count, workers = rng.randint(1, 40), rng.randint(1, 12)
        lengths = [rng.randint(1, 60) for _ in range(count)]
        costs = [n + 0.5 for n in lengths]
        planned = makespan(dispatch_order(lengths, workers), costs, workers)
        assert planned <= makespan(longest_first(lengths), costs, workers) + 1e-9


def test_one_actor_or_no_more_units_than_actors_is_longest_first():
    assert dispatch_order([3, 9, 5], 1) == [1, 2, 0]
    assert dispatch_order([3, 9, 5], 4) == [1, 2, 0]


def test_a_film_of_thousands_of_shots_is_ordered_at_once():
    rng = random.Random(3)
    lengths = [rng.randint(5, 400) for _ in range(5000)]
    order = dispatch_order(lengths, 8)
    assert sorted(order) == list(range(5000))

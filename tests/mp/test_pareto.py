import itertools
import random

import pytest

from vitq.errors import ConfigError
from vitq.mp.pareto import pareto_frontier, select


def brute_force(costs, omegas, capacity):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(costs[u][j] for u, j in enumerate(choice))
        omega = sum(omegas[u][j] for u, j in enumerate(choice))
        if cost <= capacity and (best is None or omega < best[0]):
            best = (omega, cost)
    return best


def brute_frontier(costs, omegas):
    pts = {}
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(costs[u][j] for u, j in enumerate(choice))
        omega = sum(omegas[u][j] for u, j in enumerate(choice))
        pts[cost] = min(pts.get(cost, float("inf")), omega)
    out, best = [], float("inf")
    for c in sorted(pts):
        if pts[c] < best:
            out.append((c, pts[c]))
            best = pts[c]
    return out


def random_instance(seed, n_units, monotone):
    rng = random.Random(seed)
    cands = [4, 5, 6, 7, 8]
    numel = [rng.choice([3, 4, 6, 8, 9]) for _ in range(n_units)]
    costs = [[n * b for b in cands] for n in numel]
    if monotone:  # the realistic case: Omega falls with bits
        omegas = [sorted((rng.random() * 10 ** rng.uniform(-2, 2) for _ in cands), reverse=True) for _ in numel]
    else:
        omegas = [[rng.random() for _ in cands] for _ in numel]
    return costs, omegas


@pytest.mark.parametrize("monotone", [True, False], ids=["monotone", "random"])
@pytest.mark.parametrize("n_units", [1, 2, 4, 6])
def test_dp_equals_brute_force(n_units, monotone):
    for seed in range(4):
        costs, omegas = random_instance(seed * 10 + n_units, n_units, monotone)
        frontier = pareto_frontier(costs, omegas)
        ref = brute_frontier(costs, omegas)
        assert [p.cost for p in frontier] == [c for c, _ in ref]
        assert [p.omega for p in frontier] == pytest.approx([o for _, o in ref], rel=1e-12)
        lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
        for capacity in random.Random(seed).sample(range(lo, hi + 1), k=min(12, hi - lo + 1)):
            point = select(frontier, capacity)
            omega, _ = brute_force(costs, omegas, capacity)
            assert point.cost <= capacity
            assert point.omega == pytest.approx(omega, rel=1e-12, abs=1e-15)
            # the recorded choice reproduces the point
            assert sum(costs[u][j] for u, j in enumerate(point.choice)) == point.cost
            assert sum(omegas[u][j] for u, j in enumerate(point.choice)) == pytest.approx(point.omega)


def test_capacity_pruning_keeps_the_optimum():
    costs, omegas = random_instance(3, 5, True)
    capacity = sum(c[2] for c in costs)
    pruned = pareto_frontier(costs, omegas, max_cost=capacity)
    assert all(p.cost <= capacity for p in pruned)
    assert pruned[-1].omega == pytest.approx(brute_force(costs, omegas, capacity)[0])


def test_budget_below_every_configuration_is_a_config_error():
    costs, omegas = random_instance(0, 3, True)
    frontier = pareto_frontier(costs, omegas)
    with pytest.raises(ConfigError, match="smallest one needs"):
        select(frontier, sum(min(c) for c in costs) - 1)

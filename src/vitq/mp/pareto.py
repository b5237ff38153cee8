"""Pareto-frontier bit allocation (Liu et al. Sec. 3.3, after ZeroQ): the min-Omega configuration within a size.

Omega (Eq. 17) and the size are both sums over units, so the search is a multiple-choice knapsack. It
is solved exactly by dynamic programming over units whose state is the set of Pareto-optimal partial
configurations ``(size, Omega)``: a partial configuration that is no smaller and no better than
another can never complete to an optimum (the same completion of the other is at least as good), so
pruning dominated states keeps the result exact. Sizes are integer bit counts, so no rounding enters.
The final state set is the whole frontier; the plan within a budget is its largest point that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitq.errors import ConfigError


@dataclass(frozen=True)
class FrontierPoint:
    """One Pareto-optimal configuration: ``cost`` (bits), ``omega`` and the chosen candidate index per unit."""

    cost: int
    omega: float
    choice: tuple[int, ...]


def _prune(states: dict[int, tuple[float, tuple[int, ...]]]) -> dict[int, tuple[float, tuple[int, ...]]]:
    kept: dict[int, tuple[float, tuple[int, ...]]] = {}
    best = float("inf")
    for cost in sorted(states):
        omega, choice = states[cost]
        if omega < best:
            kept[cost] = (omega, choice)
            best = omega
    return kept


def pareto_frontier(costs: Sequence[Sequence[int]], omegas: Sequence[Sequence[float]],
                    max_cost: int | None = None) -> list[FrontierPoint]:
    """All Pareto-optimal configurations, by increasing cost (and strictly decreasing Omega).

    Args:
        costs: ``costs[u][j]``, the integer size of unit ``u`` at its candidate ``j``.
        omegas: ``omegas[u][j]``, its sensitivity (same shape).
        max_cost: drop partial configurations above this total (the budget minus the fixed part); ``None`` keeps all.
    """
    if len(costs) != len(omegas) or any(len(c) != len(o) or not c for c, o in zip(costs, omegas)):
        raise ValueError("costs and omegas must have the same non-empty shape per unit")
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for cu, ou in zip(costs, omegas):
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for c0, (o0, ch0) in states.items():
            for j, (c, o) in enumerate(zip(cu, ou)):
                c1, o1 = c0 + int(c), o0 + float(o)
                if max_cost is not None and c1 > max_cost:
                    continue
                if c1 not in nxt or o1 < nxt[c1][0]:
                    nxt[c1] = (o1, ch0 + (j,))
        states = _prune(nxt)
        if not states:
            return []
    return [FrontierPoint(c, o, ch) for c, (o, ch) in sorted(states.items())]


def select(frontier: Sequence[FrontierPoint], capacity: int) -> FrontierPoint:
    """The min-Omega point whose cost is at most ``capacity`` (the frontier is sorted, Omega decreasing)."""
    fits = [p for p in frontier if p.cost <= capacity]
    if not fits:
        smallest = frontier[0].cost if frontier else None
        raise ConfigError(f"no configuration fits a size of {capacity} bits; the smallest one needs {smallest} bits")
    return fits[-1]

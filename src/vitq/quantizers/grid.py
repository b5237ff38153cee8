"""The one walk over a grid of candidates (interval factors, ratio exponents, ...) that every search uses.

A search scores ``num`` candidates on a 1-D grid and keeps the best. Scoring every one costs ``num``
evaluations of the op; :func:`walk` scores

- every candidate when ``exhaustive`` (the reference search) or when ``num <= EXHAUSTIVE_MAX``, where
  the walk below would cost about as much (3*sqrt(num) >= num for num <= 9);
- otherwise every k-th candidate (k ~ sqrt(num), and the last one), then every candidate within k of
  the best **one or two** local minima of those coarse samples: about 3*sqrt(num) evaluations, or
  5*sqrt(num) where the coarse samples show a second local minimum. Golden-section search needs fewer,
  but on 4-bit layers with outlier channels the objective is not unimodal along the grid and it
  stopped in a local optimum 3.5% worse; the coarse pass sees the whole range, and the second
  refinement catches a second valley whose coarse sample is only slightly worse than the first.

The result is a cache ``{index: loss}`` in evaluation order; :func:`best_index` picks the first index
with the lowest loss (as a loop keeping strict improvements does). It lives with the quantizers
(``SearchableQuantizer.search`` walks its own grids) and is imported by ``vitq.calibration.search``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

#: grids up to this size are evaluated exhaustively (the coarse-to-fine walk would cost as much)
EXHAUSTIVE_MAX = 8
#: local minima of the coarse samples refined around
REFINED_MINIMA = 2

Evaluate = Callable[[list[int]], Iterable[float]]


def coarse_indices(num: int) -> list[int]:
    """The coarse samples of a grid of ``num`` points: every k-th index (k ~ sqrt(num)) and the last."""
    k = max(1, round(math.sqrt(num)))
    return sorted(set(range(0, num, k)) | {num - 1})


def walk(num: int, evaluate: Evaluate, *, exhaustive: bool = False, cache: dict[int, float] | None = None
         ) -> dict[int, float]:
    """Score the candidates ``0 .. num-1`` of a grid (see the module docstring) and return ``cache``.

    ``evaluate(indices)`` returns the losses of ``indices`` in order; it is called once for the
    candidates of each pass (all; or the coarse samples, then each refinement window), skipping those
    already in ``cache``. ``cache`` may hold losses known beforehand (e.g. index -1 for the current
    interval); the walk adds to it and returns it.
    """
    cache = {} if cache is None else cache

    def run(indices: Iterable[int]) -> None:
        todo = [i for i in indices if i not in cache]
        if todo:
            cache.update(zip(todo, evaluate(todo)))

    if exhaustive or num <= EXHAUSTIVE_MAX:
        run(range(num))
        return cache
    last = num - 1
    k = max(1, round(math.sqrt(num)))
    coarse = coarse_indices(num)
    run(coarse)
    minima = [c for j, c in enumerate(coarse)
              if all(cache[c] <= cache[coarse[jj]] for jj in (j - 1, j + 1) if 0 <= jj < len(coarse))]
    for best in sorted(minima, key=cache.__getitem__)[:REFINED_MINIMA]:
        run(range(max(0, best - k + 1), min(last, best + k - 1) + 1))
    return cache


def best_index(cache: dict[int, float]) -> int:
    """The first grid index (>= 0; negative keys are reference points) of lowest loss; NaN losses lose."""
    grid = [i for i in cache if i >= 0]
    finite = [i for i in grid if cache[i] == cache[i]] or grid
    return min(finite, key=cache.__getitem__)


def coarse_to_fine(num: int, loss_at: Callable[[int], float], exhaustive: bool = False) -> tuple[int, float]:
    """Index and loss of the best of ``num`` grid points scored one at a time by ``loss_at(i)``: the
    :func:`walk` for callers without a batched evaluation."""
    cache = walk(num, lambda indices: [loss_at(i) for i in indices], exhaustive=exhaustive)
    best = best_index(cache)
    return best, cache[best]

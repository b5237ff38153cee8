"""The one coarse-to-fine walk over a candidate grid (``vitq.quantizers.grid``)."""

import math

import pytest

from vitq.quantizers.grid import EXHAUSTIVE_MAX, best_index, coarse_indices, coarse_to_fine, walk


class Recorder:
    def __init__(self, f):
        self.f, self.calls = f, []

    def __call__(self, indices):
        self.calls.append(list(indices))
        return [self.f(i) for i in indices]


def test_small_grids_and_exhaustive_walks_evaluate_everything_at_once():
    for num, exhaustive in ((EXHAUSTIVE_MAX, False), (3, False), (50, True)):
        ev = Recorder(lambda i: (i - 2.3) ** 2)
        cache = walk(num, ev, exhaustive=exhaustive)
        assert ev.calls == [list(range(num))]
        assert best_index(cache) == 2


def test_coarse_to_fine_finds_a_unimodal_optimum_in_about_three_sqrt_evaluations():
    num = 100
    for opt in (0, 37, 61.4, 99):
        ev = Recorder(lambda i, opt=opt: abs(i - opt))
        cache = walk(num, ev)
        assert best_index(cache) == round(opt)
        assert ev.calls[0] == coarse_indices(num)
        assert len(cache) <= 3 * math.sqrt(num) + 2 * round(math.sqrt(num))
    assert coarse_indices(100) == list(range(0, 100, 10)) + [99]


def test_the_second_local_minimum_is_refined_too():
    """Two valleys; the narrow, deeper one lies between coarse samples whose losses put it second."""
    def loss(i):
        return min(0.1 * abs(i - 20) + 1.0, 0.4 * abs(i - 74) + 0.5)

    coarse = {i: loss(i) for i in coarse_indices(100)}
    first = min(coarse, key=coarse.get)
    assert abs(first - 20) <= 5  # the coarse samples favour the wide valley
    best, value = coarse_to_fine(100, loss)
    assert best == 74 and value == pytest.approx(0.5)


def test_known_losses_are_not_reevaluated_and_do_not_compete():
    ev = Recorder(lambda i: float(abs(i - 30)))
    cache = walk(100, ev, cache={-1: -5.0, 40: 10.0})
    assert all(40 not in c and -1 not in c for c in ev.calls)
    assert best_index(cache) == 30  # index -1 is a reference point, not a grid candidate


def test_best_index_is_the_first_minimum_and_skips_nan():
    assert best_index({3: 1.0, 1: 0.5, 2: 0.5}) == 1
    assert best_index({0: float("nan"), 1: 2.0, 2: 1.0}) == 2
    assert best_index({0: float("nan")}) == 0

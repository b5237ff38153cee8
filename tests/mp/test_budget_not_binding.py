"""A budget at or above the largest model the candidates allow is not binding: every unit gets the largest
candidate, a warning says so, and the result reports the bits the plan actually uses."""

import logging

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.mp import search_plan
from vitq.mp.plan import MPResult
from vitq.nn.qops import quant_ops


@pytest.fixture(scope="module")
def calib():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["nuclear", "hessian", "greedy"])
def test_budget_above_the_largest_model_gives_the_largest_candidate(calib, method, caplog):
    with caplog.at_level(logging.WARNING, logger="vitq.mp"):
        res = search_plan(make_tiny_vit(), calib, method=method, budget_mb=1000.0, base_bits=8, seed=0)
    assert res.candidates == [6, 7, 8, 9, 10]
    assert set(res.unit_bits.values()) == {10}
    assert not res.budget_binding and res.sensitivities == {}  # nothing to trade: the search is skipped
    assert "not binding" in caplog.text and "10 bits, above the base 8 bits" in caplog.text
    assert res.bits_range == (8, 10)  # units at 10, ops outside the units at the base 8
    s = res.summary()
    assert (s["bits_min"], s["bits_max"], s["budget_binding"], s["average_bits"]) == (8, 10, False, 10.0)
    assert s["unit_bits"] == res.unit_bits and s["size_mb"] <= s["budget_mb"]
    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(w_bits=8, a_bits=8, plan=res.plan))
    bits = {b for op in quant_ops(q).values() for b in (op.quantizers()[0].bits, op.quantizers()[1].bits)}
    assert (min(bits), max(bits)) == res.bits_range


def test_capped_candidates_and_the_exact_largest_size(calib, caplog):
    first = search_plan(make_tiny_vit(), calib, method="greedy", budget_mb=1000.0, candidates=[6, 7, 8], seed=0)
    assert set(first.unit_bits.values()) == {8} and first.bits_range == (8, 8)
    with caplog.at_level(logging.WARNING, logger="vitq.mp"):  # a budget of exactly the largest size
        res = search_plan(make_tiny_vit(), calib, method="nuclear", budget_mb=first.size_mb, candidates=[6, 7, 8],
                          seed=0)
    assert not res.budget_binding and set(res.unit_bits.values()) == {8} and "not binding" in caplog.text
    assert "above the base" not in caplog.text


def test_a_binding_budget_is_reported_as_binding(calib):
    res = search_plan(make_tiny_vit(), calib, method="greedy", bits=6, seed=0)
    assert res.budget_binding and res.size_mb <= res.budget_mb
    lo, hi = res.bits_range
    assert (lo, hi) == (min({*res.unit_bits.values(), 6}), max({*res.unit_bits.values(), 6}))
    assert res.summary()["budget_binding"] is True


def test_budget_binding_survives_the_plan_file(tmp_path, calib):
    res = search_plan(make_tiny_vit(), calib, method="greedy", budget_mb=1000.0, base_bits=8, seed=0)
    back = MPResult.load(res.save(tmp_path / "plan.json"))
    assert back.budget_binding is False and back.bits_range == (8, 10)
    old = res.to_dict()
    del old["budget_binding"]  # a plan file written before the field: binding
    assert MPResult.from_dict(old).budget_binding is True

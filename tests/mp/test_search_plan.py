"""End to end on a tiny ViT: search a plan, quantize with it, calibrate, check size and quality."""

import itertools

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.errors import ConfigError
from vitq.eval.metrics import sqnr_db
from vitq.eval.size import model_size_mb
from vitq.mp import default_candidates, search_plan
from vitq.nn.qops import quant_ops


def test_default_candidates_follow_the_paper():
    assert default_candidates(6) == [4, 5, 6, 7, 8]
    assert default_candidates(8) == [6, 7, 8, 9, 10]
    assert default_candidates(4) == [3, 4, 5, 6]
    assert default_candidates(2) == [2, 3, 4]


@pytest.fixture(scope="module")
def nuclear6():
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(16, 3, 32, 32, generator=g)
    return make_tiny_vit(), calib, search_plan(make_tiny_vit(), calib, method="nuclear", bits=6, seed=0)


def test_nuclear_plan_at_uniform_6bit_size_is_within_budget_and_calibrates(nuclear6, test_images):
    model, calib, res = nuclear6
    uniform6 = vitq.quantize(model, vitq.QuantConfig(w_bits=6, a_bits=6))
    assert res.budget_mb == pytest.approx(model_size_mb(uniform6), abs=1e-12)
    assert res.size_mb <= res.budget_mb
    assert res.size_mb >= 0.97 * res.budget_mb  # Omega falls with bits, so the DP spends the budget
    assert set(res.unit_bits.values()) <= set(range(4, 9))
    assert len(set(res.unit_bits.values())) > 1  # a genuinely mixed plan on this model
    cfg = vitq.QuantConfig(w_bits=6, a_bits=6, method="percentile", plan=res.plan)
    q = vitq.quantize(model, cfg)
    ops = quant_ops(q)
    for unit, b in res.unit_bits.items():
        for name in res.units[unit]["ops"]:
            qa, qb = ops[name].quantizers()
            assert qa.bits == qb.bits == b
    assert model_size_mb(q) == pytest.approx(res.size_mb, abs=1e-12)
    vitq.calibrate(q, calib, progress=False)
    vitq.freeze(q)
    with torch.no_grad():
        ref, out = model(test_images), q(test_images)
    assert sqnr_db(ref, out) > 15.0


def test_dp_plan_equals_brute_force_on_the_tiny_model(nuclear6):
    _, _, res = nuclear6
    names = list(res.unit_bits)
    numel = [res.units[n]["weight_numel"] for n in names]
    fixed_mb = res.size_mb - sum(n * res.unit_bits[u] for n, u in zip(numel, names)) / 8e6
    best = None
    for bits in itertools.product(res.candidates, repeat=len(names)):
        size = fixed_mb + sum(n * b for n, b in zip(numel, bits)) / 8e6
        omega = sum(res.sensitivities[u][b] for u, b in zip(names, bits))
        if size <= res.budget_mb + 1e-12 and (best is None or omega < best[0]):
            best = (omega, bits)
    assert res.extra["omega"] == pytest.approx(best[0], rel=1e-12)
    assert sum(res.sensitivities[u][res.unit_bits[u]] for u in names) == pytest.approx(best[0], rel=1e-12)
    # the frontier is sorted by size with strictly falling Omega and contains the chosen point
    sizes = [p["size_mb"] for p in res.frontier]
    omegas = [p["omega"] for p in res.frontier]
    assert sizes == sorted(sizes) and all(a > b for a, b in zip(omegas, omegas[1:]))
    assert any(p["size_mb"] == pytest.approx(res.size_mb) and p["omega"] == pytest.approx(best[0])
               for p in res.frontier)


@pytest.mark.parametrize("method", ["nuclear", "hessian", "greedy"])
def test_explicit_budget_mb_is_respected(method, calib_images):
    model = make_tiny_vit()
    u5 = model_size_mb(vitq.quantize(model, vitq.QuantConfig(w_bits=5, a_bits=5)))
    budget = u5 * 1.05  # between uniform 5 and 6 bits, not a multiple of a unit bit step
    res = search_plan(model, calib_images[:8], method=method, budget_mb=budget, base_bits=5,
                      candidates=[3, 4, 5, 6, 7], hessian_samples=2, seed=0)
    assert res.size_mb <= budget
    assert res.size_mb > u5  # the slack above uniform 5-bit is spent
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=5, a_bits=5, plan=res.plan))
    assert model_size_mb(q) == pytest.approx(res.size_mb, abs=1e-12)


def test_impossible_budget_is_a_clear_config_error(calib_images):
    model = make_tiny_vit()
    u4 = model_size_mb(vitq.quantize(model, vitq.QuantConfig(w_bits=4, a_bits=4)))
    with pytest.raises(ConfigError, match=r"below the smallest model.*every unit at 4 bits"):
        search_plan(model, calib_images[:4], method="nuclear", budget_mb=u4 * 0.95, base_bits=4,
                    candidates=[4, 5, 6])


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "random", "bits": 6}, "method='random'"),
    ({"method": "nuclear"}, "give a budget"),
    ({"method": "nuclear", "bits": 1}, "bits=1"),
    ({"method": "nuclear", "bits": 6, "candidates": [4, 17]}, "candidate bits=17"),
    ({"method": "nuclear", "bits": 6, "msa_feature": "scores"}, "msa_feature"),
    ({"method": "nuclear", "bits": 6, "init": "liu2021"}, "init='liu2021'"),
])
def test_bad_arguments_name_the_value(kwargs, match, calib_images):
    with pytest.raises(ConfigError, match=match):
        search_plan(make_tiny_vit(), calib_images[:2], **kwargs)


def test_msa_output_feature_and_op_granularity(calib_images):
    model = make_tiny_vit()
    res = search_plan(model, calib_images[:8], method="nuclear", bits=6, msa_feature="output", granularity="op")
    assert len(res.unit_bits) == 12 and res.size_mb <= res.budget_mb
    # matmuls own no weights: free in size, so the DP gives them the top candidate
    assert all(b == 8 for u, b in res.unit_bits.items() if "matmul" in u)

import pytest
from conftest import make_tiny_vit

import vitq
from vitq.eval.size import model_size_mb
from vitq.mp import search_plan


@pytest.mark.parametrize("bits", [4, 6])
def test_greedy_meets_the_budget_and_lowers_loss_steps(bits, calib_images):
    model = make_tiny_vit()
    res = search_plan(model, calib_images, method="greedy", bits=bits, seed=0)
    assert res.size_mb <= res.budget_mb
    # starting from all-highest bits, the last step that met the budget is the first at or below it
    sizes = [p["size_mb"] for p in res.frontier]
    assert sizes and sizes[0] < model_size_mb(vitq.quantize(model, vitq.QuantConfig(w_bits=bits + 2, a_bits=bits + 2)))
    first_fit = next(i for i, s in enumerate(sizes) if s <= res.budget_mb + 1e-12)
    assert all(s > res.budget_mb for s in sizes[:first_fit])
    assert all(s <= res.budget_mb + 1e-12 for s in sizes[first_fit:])  # refill never exceeds it
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=bits, a_bits=bits, plan=res.plan))
    assert model_size_mb(q) == pytest.approx(res.size_mb, abs=1e-12)


def test_greedy_beats_uniform_on_its_own_calibration_loss(calib_images):
    """At the size of uniform 4-bit the greedy plan's calibration KL (same cheap intervals) is below
    uniform 4-bit's (measured: 6.67e-4 vs 6.91e-4; greedy is a heuristic, so 5% slack)."""
    import torch
    import torch.nn.functional as F

    from vitq.mp.probe import QuantProbe

    model = make_tiny_vit()
    res = search_plan(model, calib_images, method="greedy", bits=4, seed=0)
    probe = QuantProbe(model, calib_images, init="percentile", ref_bits=max(res.candidates))  # as search_plan

    def kl(plan_bits):
        probe.enable_all(False)
        with torch.no_grad():
            ref = F.softmax(probe.logits(calib_images), -1)
        for name, b in plan_bits.items():
            probe.set_bits([name], b, enabled=True)
        with torch.no_grad():
            return F.kl_div(F.log_softmax(probe.logits(calib_images), -1), ref, reduction="batchmean").item()

    greedy = kl({n: v["w_bits"] for n, v in res.plan.items()})
    uniform = kl({n: 4 for n in res.plan})
    assert greedy == pytest.approx(res.frontier[-1]["omega"], rel=1e-4)
    assert len(set(res.unit_bits.values())) > 1
    assert greedy <= uniform * 1.05

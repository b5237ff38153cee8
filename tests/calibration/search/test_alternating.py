import pytest
import torch
import torch.nn as nn
from helpers_search import SPECS, evaluator

import vitq
from vitq.calibration.search import OpData, search_op
from vitq.calibration.search.fast import FastEvaluator
from vitq.calibration.search.loss import HessianLoss
from vitq.calibration.search.reference import DirectEvaluator
from vitq.nn.qops import OpQuantSpec, QuantLinear, QuantMatMul, quant_ops
from vitq.quantizers.base import SearchableQuantizer
from vitq.quantizers.uniform import UniformQuantizer, fake_quantize, max_scale


def _linear_case(bits=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(32, 16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 32, generator=g) * 0.2)
        lin.bias.copy_(torch.randn(16, generator=g) * 0.1)
    x = torch.randn(8, 10, 32, generator=g)
    x[..., 3] += 4.0  # an outlier channel, as post-LayerNorm ViT activations have
    op = QuantLinear.from_module(lin, OpQuantSpec(w_bits=bits, a_bits=bits))
    with torch.no_grad():
        target = lin(x)
    op.input_quantizer.init_max(x)
    op.weight_quantizer.init_max(lin.weight)
    return op, OpData(a=x, b=lin.weight.detach(), target=target, b_is_weight=True)


@pytest.mark.parametrize("method", ["liu2021-sim", "easyquant", "mse", "liu2021-sim+rank"])
@pytest.mark.parametrize("bits", [4, 6, 8])
def test_search_never_ends_worse_than_start(method, bits):
    op, data = _linear_case(bits)
    res = search_op(op, "fc", data, SPECS[method], num_candidates=20, max_iters=5, tol=1e-9,
                    ranking_gamma=1.0, ranking_pairs=64, ranking_margin=0.0, generator=torch.Generator().manual_seed(0))
    assert res.loss_end <= res.loss_start
    assert all(b <= a + 1e-12 for a, b in zip(res.history, res.history[1:]))
    assert res.loss_end < res.loss_start  # at 4-8 bits with an outlier the max interval is not optimal


def test_bias_correction_reduces_mean_output_error():
    """Eq. 13-15: after correction the per-channel mean output error on the calibration data is ~0."""
    kw = dict(num_candidates=20, max_iters=3, tol=1e-9, ranking_gamma=0.0, ranking_pairs=0, ranking_margin=0.0)

    def mean_channel_error(method):
        op, data = _linear_case(bits=4, seed=1)
        bias0 = op.bias.detach().clone()
        search_op(op, "fc", data, SPECS[method], generator=torch.Generator().manual_seed(0), **kw)
        op.set_enabled(True)
        with torch.no_grad():
            err = (op(data.a) - data.target).mean(dim=(0, 1)).abs().mean().item()
        return err, not torch.equal(op.bias.detach(), bias0)

    err_plain, changed_plain = mean_channel_error("liu2021-sim")
    err_bc, changed_bc = mean_channel_error("liu2021-sim+bc")
    assert changed_bc and not changed_plain
    assert err_bc < 0.2 * err_plain


def test_matmul_search_with_ranking_runs_on_attention_scores():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 2, 9, 8, generator=g), torch.randn(4, 2, 8, 9, generator=g)
    mm = QuantMatMul("attn_scores", OpQuantSpec(a_bits=4))
    mm.a_quantizer.init_max(q)
    mm.b_quantizer.init_max(k)
    data = OpData(a=q, b=k, target=q @ k, b_is_weight=False)
    res = search_op(mm, "attn", data, SPECS["liu2021"], num_candidates=15, max_iters=3, tol=1e-9,
                    ranking_gamma=1.0, ranking_pairs=16, ranking_margin=0.0, generator=g)
    assert res.loss_end <= res.loss_start


class CountingQuantizer(SearchableQuantizer):
    """A uniform quantizer written against the extension protocol, counting the engine's calls."""

    def __init__(self, bits):
        super().__init__(bits)
        self.searches = []

    def fake_quant_with(self, x, scale):
        return fake_quantize(x, scale, self.bits)

    def init_max(self, x):
        self.scale.copy_(max_scale(x, self.bits))

    def search(self, x, loss_fn, current_loss, base, factors, exhaustive=False):
        self.searches.append(exhaustive)
        return super().search(x, loss_fn, current_loss, base, factors, exhaustive)


@pytest.mark.parametrize("search", ["fast", "reference"])
def test_engine_calibrates_a_plugged_in_quantizer(tiny_vit, calib_images, search):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021", num_candidates=10, max_iters=2, search=search))
    fc2 = q.blocks[1].mlp.fc2
    fc2.input_quantizer = CountingQuantizer(8)
    rep = vitq.calibrate(q, calib_images, progress=False)
    assert fc2.input_quantizer.searches and fc2.input_quantizer.enabled
    # the quantizer is told whether the evaluator walks every candidate
    assert set(fc2.input_quantizer.searches) == {search == "reference"}
    res = next(r for r in rep.ops if r.name == "blocks.1.mlp.fc2")
    assert res.loss_end <= res.loss_start
    assert res.scales[0] == [float(fc2.input_quantizer.scale)]


def test_the_search_and_the_objective_pick_the_evaluator(tiny_vit):
    """``search`` names the evaluator; the fast one needs a similarity loss (a Hessian-weighted search
    under ``search="fast"`` evaluates directly, coarse-to-fine); ops with a non-uniform quantizer keep
    the evaluator for their uniform operand."""
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="mptq"))
    ops = quant_ops(q)
    x = torch.randn(2, 5, ops["blocks.0.attn.qkv"].in_features)
    qkv = ops["blocks.0.attn.qkv"]
    data = OpData(a=x, b=qkv.weight.detach(), target=qkv.compute(x, qkv.weight.detach()), b_is_weight=True)
    fast = evaluator("fast", qkv, data, SPECS["mptq"])
    assert isinstance(fast, FastEvaluator) and not fast.exhaustive
    ref = evaluator("reference", qkv, data, SPECS["mptq"])
    assert isinstance(ref, DirectEvaluator) and ref.exhaustive
    data.out_weight = torch.ones_like(data.target)
    hess = evaluator("fast", qkv, data, SPECS["ptq4vit"])
    assert isinstance(hess, DirectEvaluator) and not hess.exhaustive
    assert isinstance(hess.problem.loss, HessianLoss)
    with pytest.raises(ValueError, match="search="):
        evaluator("exhaustive", qkv, data, SPECS["mptq"])
    fc2 = ops["blocks.0.mlp.fc2"]
    assert isinstance(fc2.input_quantizer, SearchableQuantizer)  # OPT-m: searched by its own ``search``
    assert isinstance(fc2.weight_quantizer, UniformQuantizer)  # by the evaluator


def test_a_searchable_operand_is_searched_by_its_quantizer_with_the_op_loss():
    """The quantizer's ``search`` receives the op's loss of its operand (the other operand quantized as
    it stands) and the grid of the spec; the uniform operand goes to the evaluator."""
    op, data = _linear_case(bits=4)
    seen = {}

    class Spy(CountingQuantizer):
        def search(self, x, loss_fn, current_loss, base, factors, exhaustive=False):
            seen.update(x=x, loss=loss_fn(self.fake_quant_with(x, self.scale)), current=current_loss,
                        factors=list(factors))
            return super().search(x, loss_fn, current_loss, base, factors, exhaustive)

    op.input_quantizer = Spy(4)
    op.input_quantizer.init_max(data.a)
    res = search_op(op, "fc", data, SPECS["liu2021-sim"], num_candidates=12, max_iters=1, tol=0.0,
                    ranking_gamma=0.0, ranking_pairs=0, ranking_margin=0.0, generator=torch.Generator().manual_seed(0),
                    search="fast")
    assert seen["x"] is data.a
    assert seen["loss"] == pytest.approx(seen["current"], abs=1e-12)  # same loss, same intervals in force
    assert seen["factors"] == SPECS["liu2021-sim"].factors(12)
    assert res.loss_end <= res.loss_start

import pytest
import torch
import torch.nn as nn

from vitq.calibration.search import OpData, search_op
from vitq.recipes import RECIPES

METHODS = {n: r.search for n, r in RECIPES.items()}
from vitq.nn.qops import OpQuantSpec, QuantLinear, QuantMatMul


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
    res = search_op(op, "fc", data, METHODS[method], num_candidates=20, max_iters=5, tol=1e-9,
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
        search_op(op, "fc", data, METHODS[method], generator=torch.Generator().manual_seed(0), **kw)
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
    res = search_op(mm, "attn", data, METHODS["liu2021"], num_candidates=15, max_iters=3, tol=1e-9,
                    ranking_gamma=1.0, ranking_pairs=16, ranking_margin=0.0, generator=g)
    assert res.loss_end <= res.loss_start

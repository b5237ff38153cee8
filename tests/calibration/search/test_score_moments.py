"""Attention-score losses from moments equal the losses of the scores themselves."""

import pytest
import torch
from helpers_search import SPECS, evaluator

from vitq.calibration.search import OpData, search_op
from vitq.calibration.search.score_moments import ScoreMoments
from vitq.nn.qops import OpQuantSpec, QuantMatMul


def _scores_op(seed, bits=6, n=3, heads=2, t=20, d=4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, heads, t, d, generator=g)
    k = torch.randn(n, heads, t, d, generator=g) * 2 + 0.3
    kt = k.transpose(-1, -2)  # a strided view, as the attention passes it
    mm = QuantMatMul("attn_scores", OpQuantSpec(a_bits=bits))
    mm.a_quantizer.init_max(q)
    mm.b_quantizer.init_max(kt)
    return mm, OpData(a=q, b=kt, target=q @ kt, b_is_weight=False)


@pytest.mark.parametrize("method", ["liu2021", "liu2021-sim", "easyquant", "mse"])
@pytest.mark.parametrize("which", [0, 1])
def test_score_moment_loss_equals_the_direct_loss(method, which):
    mm, data = _scores_op(0)
    s = evaluator("reference", mm, data, SPECS[method], gamma=0.7, pairs=16, margin=0.05)
    loss = s.problem.loss
    qa, qb = mm.quantizers()
    aq, bq = qa.fake_quant_with(data.a, qa.scale), qb.fake_quant_with(data.b, qb.scale)
    moments = ScoreMoments(which, bq if which == 0 else aq, loss.stats, loss.ranking, loss.gamma)
    for f in (0.5, 0.8, 1.0):
        if which == 0:
            cand = qa.fake_quant_with(data.a, qa.scale * f)
            out, direct = cand @ bq, s.problem.loss_of(cand, bq)
        else:
            cand = qb.fake_quant_with(data.b, qb.scale * f)
            out, direct = aq @ cand, s.problem.loss_of(aq, cand)
        want = _loss64(out.double(), data.target.double(), method, loss)
        # float32 sums in another order than the direct loss; both within float32 rounding of the
        # float64 loss. MSE = (sum S^2 - 2 sum S t + sum t^2) / numel cancels: its rounding scales
        # with the terms, not with the loss.
        scale = 1.0 if method != "mse" else data.target.double().pow(2).mean().item()
        assert abs(moments.loss(cand) - want) <= 1e-5 * scale
        assert abs(direct - want) <= 1e-5 * scale


def _loss64(out, target, method, loss_strategy):
    """The objective (Eq. 11 for liu2021) in float64, written from its definition."""
    n = out.shape[0]
    o, t = out.reshape(n, -1), target.reshape(n, -1)
    if SPECS[method].objective == "mse":
        loss = (o - t).pow(2).mean(dim=1)
    else:
        if SPECS[method].objective == "pearson":
            o, t = o - o.mean(dim=1, keepdim=True), t - t.mean(dim=1, keepdim=True)
        loss = -(o * t).sum(dim=1) / (o.norm(dim=1) * t.norm(dim=1))
    if loss_strategy.ranking is not None:
        r = loss_strategy.ranking
        m = (out[..., r.p] - out[..., r.q]) * r.sign.double() / r.scale
        loss = loss + loss_strategy.gamma * (r.margin - m).clamp(min=0).reshape(n, -1).mean(dim=1)
    return loss.mean().item()


def test_score_moments_are_used_and_end_where_the_reference_does():
    """Heads narrower than the sequence: the moment path runs (checked), and the search ends within
    1e-3 of the exhaustive reference."""
    losses = []
    for fast in (False, True):
        mm, data = _scores_op(1, bits=4)
        if fast:
            probe = evaluator("fast", mm, data, SPECS["liu2021"], gamma=1.0, pairs=16)
            assert probe._score_moments_apply(0) and probe._score_moments_apply(1)
        r = search_op(mm, "attn", data, SPECS["liu2021"], num_candidates=40, max_iters=4, tol=1e-9,
                      ranking_gamma=1.0, ranking_pairs=16, ranking_margin=0.0,
                      generator=torch.Generator().manual_seed(0), search="fast" if fast else "reference")
        assert r.loss_end <= r.loss_start
        losses.append(r.loss_end)
    assert abs(losses[0] - losses[1]) <= 1e-3

import pytest
import torch

import vitq
from vitq.calibration.search import OpData
from vitq.calibration.search.loss import HessianLoss, SimilarityLoss, make_loss, output_grad_squares
from vitq.errors import VitqError
from vitq.nn.qops import quant_ops
from vitq.recipes import SearchSpec


def test_output_grad_squares_match_op_outputs(tiny_vit, calib_images):
    q = vitq.quantize(tiny_vit)
    ops = {n: op for n, op in quant_ops(q).items() if n.startswith("blocks.1.")}
    batches = list(calib_images.split(8))
    w = output_grad_squares(q, batches, lambda m, x: m(x), ops)
    outs = {}
    hs = [op.register_forward_hook(lambda _m, _a, o, n=n: outs.setdefault(n, []).append(o)) for n, op in ops.items()]
    with torch.no_grad():
        for b in batches:
            q(b)
    for h in hs:
        h.remove()
    for n in ops:
        assert w[n].shape == torch.cat(outs[n]).shape
        assert (w[n] >= 0).all() and w[n].sum() > 0
    assert not any(p.grad is not None for p in q.parameters())  # gradients only w.r.t. op outputs


def test_hessian_objective_never_ends_worse(tiny_vit, calib_images):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="ptq4vit", num_candidates=15, max_iters=2))
    rep = vitq.calibrate(q, calib_images, progress=False)
    assert all(r.loss_end <= r.loss_start for r in rep.ops)
    assert any(r.loss_end < r.loss_start for r in rep.ops)


def _chunks(out, size):
    return [(slice(i, min(len(out), i + size)), out[i: i + size]) for i in range(0, len(out), size)]


def test_losses_do_not_depend_on_the_chunking():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(7, 5, 3, generator=g)
    out = target + 0.1 * torch.randn(7, 5, 3, generator=g)
    data = OpData(a=out, b=out, target=target, b_is_weight=False, out_weight=torch.rand(7, 5, 3, generator=g))
    for spec in (SearchSpec(objective="pearson"), SearchSpec(objective="mse"), SearchSpec(objective="hessian")):
        loss = make_loss(spec, data, "linear", ranking_gamma=1.0, ranking_pairs=0, ranking_margin=0.0, generator=g)
        assert isinstance(loss, HessianLoss if spec.objective == "hessian" else SimilarityLoss)
        whole = loss.mean(_chunks(out, 7), 7)
        assert loss.mean(_chunks(out, 2), 7) == pytest.approx(whole, rel=1e-6)
    hess = make_loss(SearchSpec(objective="hessian"), data, "linear", ranking_gamma=0.0, ranking_pairs=0,
                     ranking_margin=0.0, generator=g)
    want = ((out - target).pow(2) * data.out_weight).sum().item() / 7
    assert hess.mean(_chunks(out, 3), 7) == pytest.approx(want, rel=1e-6)


def test_ranking_pairs_only_for_attention_scores():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 2, 6, 6, generator=g)
    data = OpData(a=t, b=t, target=t, b_is_weight=False)
    spec = SearchSpec(objective="pearson", ranking=True)
    kw = dict(ranking_pairs=8, ranking_margin=0.0, generator=g)
    assert make_loss(spec, data, "attn_scores", ranking_gamma=0.5, **kw).ranking is not None
    assert make_loss(spec, data, "attn_context", ranking_gamma=0.5, **kw).ranking is None
    assert make_loss(spec, data, "attn_scores", ranking_gamma=0.0, **kw).ranking is None


def test_hessian_loss_needs_output_weights():
    t = torch.randn(2, 3)
    with pytest.raises(VitqError, match="output gradients"):
        HessianLoss(OpData(a=t, b=t, target=t, b_is_weight=False))
    with pytest.raises(ValueError, match="nothing to search"):
        make_loss(SearchSpec(), OpData(a=t, b=t, target=t, b_is_weight=False), "linear", ranking_gamma=0.0,
                  ranking_pairs=0, ranking_margin=0.0, generator=torch.Generator())

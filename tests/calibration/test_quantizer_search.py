import pytest
import torch

import vitq
from vitq.calibration.hessian import output_grad_squares
from vitq.calibration.quantizer_search import extended_searcher
from vitq.calibration.search import OpSearch
from vitq.recipes import RECIPES

METHODS = {n: r.search for n, r in RECIPES.items()}
from vitq.nn.qops import quant_ops
from vitq.quantizers.base import SearchableQuantizer
from vitq.quantizers.uniform import fake_quantize, max_scale


class CountingQuantizer(SearchableQuantizer):
    """A uniform quantizer written against the extension protocol, counting the engine's calls."""

    def __init__(self, bits):
        super().__init__(bits)
        self.searches = 0

    def fake_quant_with(self, x, scale):
        return fake_quantize(x, scale, self.bits)

    def init_max(self, x):
        self.scale.copy_(max_scale(x, self.bits))

    def search(self, x, loss_fn, current_loss, base, factors, exhaustive=False):
        self.searches += 1
        return super().search(x, loss_fn, current_loss, base, factors, exhaustive)


@pytest.mark.parametrize("search", ["fast", "reference"])
def test_engine_calibrates_a_plugged_in_quantizer(tiny_vit, calib_images, search):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021", num_candidates=10, max_iters=2, search=search))
    fc2 = q.blocks[1].mlp.fc2
    fc2.input_quantizer = CountingQuantizer(8)
    rep = vitq.calibrate(q, calib_images, progress=False)
    assert fc2.input_quantizer.searches >= 1 and fc2.input_quantizer.enabled
    res = next(r for r in rep.ops if r.name == "blocks.1.mlp.fc2")
    assert res.loss_end <= res.loss_start
    assert res.scales[0] == [float(fc2.input_quantizer.scale)]


def test_plain_ops_keep_their_searcher(tiny_vit):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="mptq"))
    ops = quant_ops(q)
    assert extended_searcher(OpSearch, ops["blocks.0.attn.qkv"], METHODS["mptq"], True) is OpSearch
    assert extended_searcher(OpSearch, ops["blocks.0.mlp.fc2"], METHODS["mptq"], True) is not OpSearch
    assert extended_searcher(OpSearch, ops["blocks.0.attn.qkv"], METHODS["ptq4vit"], True) is not OpSearch


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

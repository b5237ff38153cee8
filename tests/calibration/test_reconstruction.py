"""Block reconstruction (vitq.calibration.reconstruction): AdaRound starts at the float weight and ends on
the grid, the straight-through gradients, a block's output error goes down, one seed gives one result,
and the recipe / config plumbing."""

from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.calibration.reconstruction import AdaRoundWeight, UnitRows, reconstruct_unit
from vitq.config import QuantConfig
from vitq.errors import ConfigError, VitqError
from vitq.nn.qops import quant_ops, quantization_disabled
from vitq.quantizers.log import LogSqrt2Quantizer
from vitq.quantizers.uniform import UniformQuantizer, fake_quantize
from vitq.recipes import Reconstruction, get_recipe


def test_adaround_starts_at_the_float_weight_and_hardens_onto_the_grid():
    w = torch.randn(16, 24) * 0.1
    q = UniformQuantizer(4, axis=0, num_channels=16)
    q.init_max(w)
    ar = AdaRoundWeight(q, w)
    assert torch.allclose(ar(w), w, atol=1e-3 * float(q.scale.max()))  # h(V) = fractional part (clamped 1e-4)
    hard = ar.hard_weight(w)
    codes = q.codes(hard).float()
    assert torch.allclose(hard, codes * q.broadcast_scale(w), rtol=0, atol=1e-6)  # on the grid
    assert codes.min() >= q.qmin and codes.max() <= q.qmax
    # at the start every weight goes to its nearest grid point
    assert torch.equal(hard, fake_quantize(w, q.broadcast_scale(w), 4))


def test_fake_quantize_with_grad_has_the_same_values_and_lsq_gradients():
    x = torch.randn(200) * 3
    scale = torch.tensor(0.25, requires_grad=True)
    y = fake_quantize(x, scale, 4)
    assert torch.equal(y.detach(), fake_quantize(x, scale.detach(), 4))
    y.sum().backward()
    assert scale.grad is not None and scale.grad.abs() > 0  # LSQ: the interval learns
    xg = x.clone().requires_grad_(True)
    fake_quantize(xg, torch.tensor(0.25), 4).sum().backward()
    inside = ((x / 0.25) >= -8) & ((x / 0.25) <= 7)
    assert torch.equal(xg.grad, inside.float())  # straight through inside the range, zero where clamped


def test_non_uniform_quantizers_pass_gradients_straight_through_with_unchanged_values():
    q = LogSqrt2Quantizer(4)
    x = torch.rand(64, 8).softmax(-1)
    q.init_max(x)
    q.enabled = True
    xg = x.clone().requires_grad_(True)
    y = q(xg)
    assert torch.equal(y.detach(), q(x))
    y.sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))


def _calibrated_block(seed=0, n=64, method="liu2021-pc", a_bits=8):
    model = make_tiny_vit(seed=seed)
    torch.manual_seed(seed + 1)
    images = torch.randn(n, 3, 32, 32)
    q = vitq.quantize(model, QuantConfig(w_bits=3, a_bits=a_bits, method=method))
    vitq.calibrate(q, images, progress=False)
    block = q.blocks[0]
    ops = {n: op for n, op in quant_ops(q).items() if n.startswith("blocks.0.")}
    with torch.no_grad():
        hq = q._pos_embed(q.patch_embed(images))
        with quantization_disabled(q):
            hf = q._pos_embed(q.patch_embed(images))
            target = block(hf)
    return block, ops, [((hq,), {})], [((hf,), {})], [target]


def _state(block):
    return {k: v.clone() for k, v in block.state_dict().items()}


def test_reconstruction_lowers_a_blocks_output_error_and_is_seeded():
    spec = Reconstruction(iters=100, batch_size=16)
    block, ops, xq, xf, target = _calibrated_block()
    res = reconstruct_unit("blocks.0", block, ops, xq, xf, target, spec, seed=3)
    assert res.kept and res.loss_after < 0.95 * res.loss_before, res
    assert res.weights == 4 and res.intervals >= 4  # qkv, proj, fc1, fc2; their inputs and both matmuls' operands
    # the weights are on their grids
    for op in ops.values():
        if op.has_weight:
            c = op.weight / op.weight_quantizer.broadcast_scale(op.weight)
            assert torch.allclose(c, c.round(), atol=1e-4)
    first = _state(block)
    block2, ops2, xq2, xf2, target2 = _calibrated_block()
    reconstruct_unit("blocks.0", block2, ops2, xq2, xf2, target2, spec, seed=3)
    assert all(torch.equal(first[k], v) for k, v in _state(block2).items())


def test_learned_weight_intervals_lower_the_error_further_and_the_codes_stay_exact():
    base = Reconstruction(iters=100, batch_size=16)
    block, ops, xq, xf, target = _calibrated_block()
    plain = reconstruct_unit("blocks.0", block, ops, xq, xf, target, base, seed=3)
    block2, ops2, xq2, xf2, target2 = _calibrated_block()
    scales = {n: op.weight_quantizer.scale.clone() for n, op in ops2.items() if op.has_weight}
    learned = reconstruct_unit("blocks.0", block2, ops2, xq2, xf2, target2,
                               Reconstruction(iters=100, batch_size=16, lr_weight_scale=1e-2), seed=3)
    assert learned.kept and learned.loss_after < plain.loss_after, (plain, learned)
    moved = 0
    for n, op in ops2.items():
        if op.has_weight:
            q = op.weight_quantizer
            moved += int(not torch.equal(q.scale, scales[n]))
            c = op.weight / q.broadcast_scale(op.weight)  # the committed intervals hold the weights' codes
            assert torch.allclose(c, c.round(), atol=1e-4) and c.min() >= q.qmin - 1e-4 and c.max() <= q.qmax + 1e-4
    assert moved == 4
    with pytest.raises(ConfigError, match="lr_weight_scale"):
        Reconstruction(lr_weight_scale=-1.0)


def test_asymmetric_activation_intervals_are_learned_with_their_zero_points_kept():
    from vitq.quantizers.affine import AffineQuantizer

    q = AffineQuantizer(4)
    x = torch.randn(500) * 2 + 1
    q.init_max(x)
    q.enabled = True
    q.scale.requires_grad_(True)
    y = q(x)  # the differentiable path gives the searched values
    assert torch.equal(y.detach(), q.fake_quant_with(x, q.scale.detach()))
    y.pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs() > 0
    q.scale.requires_grad_(False)

    block, ops, xq, xf, target = _calibrated_block(method="liu2021-pc-asym", a_bits=4)
    affine = {id(a): a for op in ops.values() for a in op.quantizers()[:1 if op.has_weight else 2]
              if type(a) is AffineQuantizer and a.enabled}
    assert len(affine) >= 4
    before = {k: (a.scale.clone(), a.zero_point.clone()) for k, a in affine.items()}
    res = reconstruct_unit("blocks.0", block, ops, xq, xf, target, Reconstruction(iters=100, batch_size=16), seed=3)
    assert res.kept and res.loss_after < res.loss_before and res.intervals >= len(affine)
    # learning them lowers the error below the rounding alone (the intervals fixed)
    block2, ops2, xq2, xf2, target2 = _calibrated_block(method="liu2021-pc-asym", a_bits=4)
    fixed = reconstruct_unit("blocks.0", block2, ops2, xq2, xf2, target2,
                             Reconstruction(iters=100, batch_size=16, lr_scale=0.0), seed=3)
    assert fixed.intervals == 0 and res.loss_after < fixed.loss_after, (res, fixed)
    assert sum(not torch.equal(a.scale, before[k][0]) for k, a in affine.items()) >= 4  # learned
    assert all(torch.equal(a.zero_point, before[k][1]) for k, a in affine.items())  # integer zero points kept
    assert not any(a.scale.requires_grad for a in affine.values())


def test_reconstruction_recipe_runs_end_to_end_and_keeps_float_when_disabled():
    model = make_tiny_vit(seed=1)
    torch.manual_seed(2)
    images = torch.randn(48, 3, 32, 32)
    cfg = QuantConfig(w_bits=4, a_bits=4, method="liu2021-pc", recon_iters=20)
    out = vitq.pipeline(model, cfg, images, progress=False)
    assert [u["unit"] for u in out.report.units] == ["patch_embed", "blocks.0", "blocks.1"]
    assert all(u["loss_after"] <= u["loss_before"] for u in out.report.units)
    with torch.no_grad(), quantization_disabled(out.model):
        assert torch.allclose(out.model(images[:4]), model(images[:4]), atol=1e-1)  # weights moved by < 1 step


def test_reconstruction_config_plumbing():
    assert QuantConfig(method="liu2021-pc").recipe().reconstruction is None
    r = QuantConfig(method="liu2021-pc", recon_iters=7).recipe().reconstruction
    assert r is not None and r.iters == 7
    assert QuantConfig.from_dict(QuantConfig(method="liu2021-pc", recon_iters=7).to_dict()).recon_iters == 7
    with pytest.raises(ConfigError, match="recon_iters"):
        QuantConfig(recon_iters=-1)
    with pytest.raises(ConfigError, match="gptq"):
        QuantConfig(method="liu2021-gptq", recon_iters=10)
    with pytest.raises(ConfigError, match="iters"):
        Reconstruction(iters=-3)
    assert get_recipe("liu2021-pc").reconstruction is None


def test_reconstruction_settings_from_the_config_reach_the_recipe_its_rows_and_json():
    cfg = QuantConfig(method="liu2021-pc-asym", recon_iters=7, recon_lr_weight_scale=1e-3, recon_drop_prob=0.0)
    r = cfg.recipe().reconstruction
    assert (r.iters, r.lr_weight_scale, r.drop_prob, r.lr_scale) == (7, 1e-3, 0.0, Reconstruction().lr_scale)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.recipe().row_fields(cfg) == {"recon_iters": 7, "recon_lr_weight_scale": 1e-3, "recon_drop_prob": 0.0}
    # a recipe with its own reconstruction: only the setting changes, and the row names it
    cfg = QuantConfig(method="liu2021-pc-recon", recon_lr_scale=1e-2)
    registered = get_recipe("liu2021-pc-recon").reconstruction
    assert cfg.recipe().reconstruction == replace(registered, lr_scale=1e-2)
    assert cfg.recipe().row_fields(cfg)["recon_lr_scale"] == 1e-2
    assert "recon_lr_scale" not in QuantConfig(method="liu2021-pc-recon").recipe().row_fields(QuantConfig())
    # set where no reconstruction runs, it would be ignored: an error naming it
    for kw in ({"method": "liu2021-pc"}, {"method": "liu2021-pc-recon", "recon_iters": 0}):
        with pytest.raises(ConfigError, match="recon_drop_prob tune block reconstruction"):
            QuantConfig(recon_drop_prob=0.1, **kw)
    for bad in ({"recon_drop_prob": 1.5}, {"recon_lr_scale": -1e-3}, {"recon_lr_weight_scale": float("nan")},
                {"recon_drop_prob": True}, {"recon_lr_scale": "1e-3"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            QuantConfig(method="liu2021-pc-recon", **bad)


def test_float_reference_gives_the_float_models_units_after_weights_changed_in_place():
    from vitq.calibration.reconstruction import FloatReference

    model = make_tiny_vit(seed=4)
    images = torch.randn(8, 3, 32, 32)
    q = vitq.quantize(model, QuantConfig(w_bits=4, a_bits=4, method="minmax"))
    ref = FloatReference(q)
    with torch.no_grad():
        q.blocks[0].attn.qkv.weight.mul_(0.5)  # what GPTQ / reconstruction / bias correction do to earlier units
        q.blocks[0].mlp.fc1.bias.add_(1.0)
        want_in = model._pos_embed(model.patch_embed(images))
        want_in = model.blocks[0](want_in)
        want_out = model.blocks[1](want_in)
    inputs, outputs = ref.unit_io(q, q.blocks[1], [images], lambda m, b: m(b))
    assert torch.allclose(inputs[0][0][0], want_in, atol=1e-5)
    assert torch.allclose(outputs[0], want_out, atol=1e-5)
    assert q.blocks[0].attn.qkv.weight.data_ptr() != ref.params["blocks.0.attn.qkv.weight"].data_ptr()
    assert torch.allclose(q.blocks[0].attn.qkv.weight, 0.5 * model.blocks[0].attn.qkv.weight)  # put back


class _Recorder(torch.nn.Module):
    def forward(self, x, mask, pos=None, *, scale=1.0, tag=None):
        out = x * scale + (0 if pos is None else pos) + (0 if mask is None else mask.sum(-1, keepdim=True))
        return out, tag


def test_unit_rows_take_the_rows_of_per_image_arguments_and_pass_the_rest_as_is():
    """A unit called with more than its input (a DETR layer: masks, position embeddings, encoder output):
    tensors with a batch dimension are concatenated and indexed like the input, the rest passed as is."""
    batches = []
    for n in (3, 2):
        x, m, pos = torch.randn(n, 4, 5), torch.randn(n, 4, 7), torch.randn(n, 4, 5)
        batches.append(((x, m, pos), {"scale": 2.0, "tag": None}))
    rows = UnitRows(batches, "u")
    assert len(rows) == 5
    unit = _Recorder()
    cat = [torch.cat([b[0][i] for b in batches]) for i in range(3)]
    idx = torch.tensor([4, 0, 0, 2])
    want = cat[0][idx] * 2.0 + cat[2][idx] + cat[1][idx].sum(-1, keepdim=True)
    assert torch.allclose(rows(unit, idx)[0], want)
    x_new = torch.zeros(4, 4, 5)
    assert torch.allclose(rows(unit, idx, x_new)[0], want - cat[0][idx] * 2.0)  # the input replaced (QDrop's mix)
    assert torch.allclose(rows(unit, slice(1, 4))[0], cat[0][1:4] * 2 + cat[2][1:4] + cat[1][1:4].sum(-1, keepdim=True))
    # a constant tensor (no batch dimension) passes as is when every batch has the same one
    const = torch.ones(7)
    same = UnitRows([((torch.randn(2, 4, 5), const.clone()), {}), ((torch.randn(2, 4, 5), const.clone()), {})], "u")
    assert torch.equal(same(unit, slice(0, 1))[0] - same.x[:1], torch.full((1, 4, 5), 7.0))


def test_unit_rows_refuse_what_they_cannot_batch():
    x = torch.randn(2, 4, 5)
    with pytest.raises(VitqError, match="different shapes"):  # images of two sizes: token counts differ
        UnitRows([((x,), {}), ((torch.randn(2, 6, 5),), {})], "blocks.0")
    with pytest.raises(VitqError, match="'pos' has different shapes"):
        UnitRows([((x,), {"pos": torch.randn(2, 4)}), ((x,), {"pos": torch.randn(2, 3)})], "blocks.0")
    with pytest.raises(VitqError, match="neither per image nor the same"):
        UnitRows([((x,), {"scale": 1.0}), ((x,), {"scale": 2.0})], "blocks.0")
    with pytest.raises(VitqError, match="different arguments"):
        UnitRows([((x,), {"scale": 1.0}), ((x,), {})], "blocks.0")
    with pytest.raises(VitqError, match="tensor first"):
        UnitRows([((None, x), {})], "blocks.0")

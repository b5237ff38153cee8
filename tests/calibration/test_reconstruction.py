"""Block reconstruction (vitq.calibration.reconstruction): AdaRound starts at the float weight and ends on
the grid, the straight-through gradients, a block's output error goes down, one seed gives one result,
and the recipe / config plumbing."""

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.calibration.reconstruction import AdaRoundWeight, reconstruct_unit
from vitq.config import QuantConfig
from vitq.errors import ConfigError
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


def _calibrated_block(seed=0, n=64):
    model = make_tiny_vit(seed=seed)
    torch.manual_seed(seed + 1)
    images = torch.randn(n, 3, 32, 32)
    q = vitq.quantize(model, QuantConfig(w_bits=3, a_bits=8, method="liu2021-pc"))
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

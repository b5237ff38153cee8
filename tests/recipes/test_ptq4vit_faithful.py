"""ptq4vit as the authors' code (hahnyuan/PTQ4ViT at b42c790) runs it, on the tiny random ViT (tests/conftest.py):
head quantized, the patch embedding's input float, q/k/v weight blocks, per-channel patch-embedding weights,
per-head Q/K/V, the post-softmax coarse interval 1/(2^(b-1)-1), their candidate grid and 3 rounds."""

import pytest
import torch
import torch.nn.functional as F
from conftest import quantize_calibrated

import vitq
from vitq.errors import ConfigError, ExportError, VitqError
from vitq.eval.metrics import sqnr_db
from vitq.export.onnx_qdq import QDQActivation, qdq_twin
from vitq.nn.qops import quant_ops
from vitq.quantizers.base import FloatPassthrough
from vitq.quantizers.grouped import GroupedUniformQuantizer
from vitq.quantizers.two_region import TwinUniformQuantizer
from vitq.recipes import Quantizers, Recipe, SearchSpec, get_recipe

# Logits SQNR vs float (dB), tiny ViT, 16 calibration images, measured: W8A8 30.7, W4A4 8.7.
W8A8_MIN_DB = 27.0


def _calibrated(model, calib, **cfg):
    return quantize_calibrated(model, calib, "ptq4vit", **cfg)


@pytest.fixture
def w4a4(tiny_vit, calib_images):
    return _calibrated(tiny_vit, calib_images, w_bits=4, a_bits=4)


def test_recipe_fields():
    r = get_recipe("ptq4vit")
    assert r.quantize_head and r.float_conv_input and r.conv_input_bits is None and not r.per_channel_weights
    assert r.search == SearchSpec(objective="hessian", alpha=0.01, beta=1.2, grid="left", rounds=3)
    assert r.quantizers == Quantizers(post_gelu="ptq4vit", post_softmax="ptq4vit", qkv_weight_blocks=True,
                                      conv_weight_channels=True, attention_heads=True)


def test_head_is_quantized_and_config_can_keep_it_float(tiny_vit):
    assert "head" in quant_ops(vitq.quantize(tiny_vit, vitq.QuantConfig(method="ptq4vit")))
    assert "head" not in quant_ops(vitq.quantize(tiny_vit, vitq.QuantConfig(method="ptq4vit", quantize_head=False)))


def test_patch_embedding_input_stays_float(w4a4, calib_images):
    q, _ = w4a4
    conv = q.patch_embed.proj
    assert isinstance(conv.input_quantizer, FloatPassthrough) and conv.weight_quantizer.enabled
    x = calib_images[:2]
    expect = F.conv2d(x, conv.weight_quantizer(conv.weight), conv.bias, conv.stride)  # image not quantized
    torch.testing.assert_close(conv(x), expect, rtol=0, atol=0)
    for n, op in quant_ops(q).items():  # every other operand quantized
        if n != "patch_embed.proj":
            assert not any(isinstance(qq, FloatPassthrough) for qq in op.quantizers()), n


def test_float_conv_input_excludes_conv_input_bits():
    with pytest.raises(ConfigError, match="float_conv_input"):
        Recipe("x", "", "", SearchSpec(objective="hessian"), float_conv_input=True, conv_input_bits=8)
    with pytest.raises(ConfigError, match="float_conv_input"):
        Recipe("x", "", "", SearchSpec(objective="hessian"), float_conv_input=1)


def test_post_softmax_coarse_interval_at_4_bits():
    x = torch.rand(2, 2, 5, 5).softmax(-1)
    tw = TwinUniformQuantizer(4, mode="ptq4vit")
    tw.init_max(x)
    assert float(tw.scale) == pytest.approx(1 / 7)  # 1/(2^(b-1)-1): their SoS quantizer, top value 1.0
    assert float(tw.levels().max()) == pytest.approx(1.0)
    assert float(tw.scale / tw.fine_scale) == 2 ** round(torch.log2(torch.tensor(1 / 7 * 8 / 0.01)).item())
    opt = TwinUniformQuantizer(4, mode="optm")  # OPT-m's twin uniform is unchanged: coarse from max(x)
    opt.init_max(x)
    assert torch.equal(opt.scale, x.max() / 7)


def test_qkv_weights_one_interval_per_block(w4a4):
    q, _ = w4a4
    for n in ("blocks.0.attn.qkv", "blocks.1.attn.qkv"):
        op = quant_ops(q)[n]
        qw = op.weight_quantizer
        assert isinstance(qw, GroupedUniformQuantizer) and qw.scale.shape == (3,) and qw.bits == 4
        assert len(set(qw.scale.tolist())) == 3, n  # q, k, v searched each on its own
        rows = op.weight.shape[0] // 3
        w = op.weight.detach()
        for g in range(3):
            block = w[g * rows:(g + 1) * rows]
            codes = qw(w)[g * rows:(g + 1) * rows] / qw.scale[g]
            assert codes.abs().max() <= 8 and (codes - codes.round()).abs().max() < 1e-4
            assert not torch.equal(qw(w)[g * rows:(g + 1) * rows], block)
    for n in ("blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "head"):  # per tensor
        assert quant_ops(q)[n].weight_quantizer.scale.dim() == 0, n


def test_patch_embedding_weights_per_channel_searched_per_channel(w4a4):
    q, _ = w4a4
    conv = q.patch_embed.proj
    qw = conv.weight_quantizer
    assert isinstance(qw, GroupedUniformQuantizer) and qw.scale.shape == (conv.out_channels,)
    start = conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 7  # init_max: each channel's own max
    factors = qw.scale / start
    assert (factors <= 1.2 + 1e-6).all() and (factors >= 0.01 - 1e-6).all()
    assert len({round(f, 4) for f in factors.tolist()}) > 3  # not one factor shared by every channel


def test_q_k_v_one_interval_per_head(w4a4):
    q, _ = w4a4
    for b in (0, 1):
        scores, context = quant_ops(q)[f"blocks.{b}.attn.matmul_scores"], quant_ops(q)[f"blocks.{b}.attn.matmul_context"]
        for qq in (scores.a_quantizer, scores.b_quantizer, context.b_quantizer):
            assert isinstance(qq, GroupedUniformQuantizer) and qq.axis == 1 and qq.scale.shape == (2,)
            assert qq.scale[0] != qq.scale[1]
        assert isinstance(context.a_quantizer, TwinUniformQuantizer)


def test_search_grid_and_three_rounds(w4a4):
    f = get_recipe("ptq4vit").search.factors(100)
    assert len(f) == 100 and f[0] == pytest.approx(0.01) and f[1] - f[0] == pytest.approx(0.0119, abs=1e-6)
    assert f[-1] == pytest.approx(1.1881, abs=1e-5)  # their code never reaches beta itself
    assert SearchSpec().factors(5) == torch.linspace(0.5, 1.2, 5).tolist()  # others: unchanged
    _, report = w4a4
    searched = [o for o in report.ops if o.history]
    assert searched and all(o.rounds == 3 for o in searched)
    assert all(o.loss_end <= o.loss_start + 1e-12 for o in searched)


def test_grouped_search_picks_each_group_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(4, 6) * torch.tensor([1.0, 1.0, 1.0, 10.0, 10.0, 10.0])  # two groups, 10x apart
    target = x.clone()

    def group_loss(xq):  # squared error per group of 3 columns
        return (xq - target).pow(2).sum(0).view(2, 3).sum(1).double()

    qq = GroupedUniformQuantizer(3, axis=1, groups=2, out_axis=1)
    qq.init_max(x)
    base = qq.scale.clone()
    factors = torch.linspace(0.3, 1.2, 50).tolist()
    qq.search_groups(x, group_loss, base, factors)
    for g in range(2):  # the same as searching group g alone
        losses = [float((torch.div(x[:, 3 * g:3 * g + 3], base[g] * f).round().clamp(-4, 3) * base[g] * f
                         - target[:, 3 * g:3 * g + 3]).pow(2).sum()) for f in factors]
        start = float((qq.fake_quant_with(x, base) - target)[:, 3 * g:3 * g + 3].pow(2).sum())
        assert float(group_loss(qq(x.clone()) if qq.enabled else qq.fake_quant_with(x, qq.scale))[g]) \
            == pytest.approx(min(min(losses), start), rel=1e-6)


def test_w8a8_logits_close_to_float(tiny_vit, calib_images, test_images):
    q, _ = _calibrated(tiny_vit, calib_images, w_bits=8, a_bits=8)
    with torch.no_grad():
        assert sqnr_db(tiny_vit(test_images), q(test_images)) > W8A8_MIN_DB


def test_same_seed_same_result(tiny_vit, calib_images, test_images):
    outs = []
    for _ in range(2):
        q, _ = _calibrated(tiny_vit, calib_images, w_bits=4, a_bits=4, seed=0)
        with torch.no_grad():
            outs.append((q(test_images), {k: v.clone() for k, v in q.state_dict().items()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    assert all(torch.equal(outs[0][1][k], outs[1][1][k]) for k in outs[0][1])


def test_group_options_validated():
    with pytest.raises(ConfigError, match="qkv_weight_blocks"):
        Quantizers(qkv_weight_blocks="yes")
    with pytest.raises(ConfigError, match="weights='uniform'"):
        Quantizers(weights="affine", conv_weight_channels=True)
    with pytest.raises(ConfigError, match="inputs='uniform'"):
        Quantizers(inputs="affine", attention_heads=True)
    with pytest.raises(ConfigError, match="hessian"):
        Recipe("x", "", "", SearchSpec(objective="mse"), Quantizers(attention_heads=True))
    with pytest.raises(ConfigError, match="grid"):
        SearchSpec(grid="log")
    with pytest.raises(ConfigError, match="rounds"):
        SearchSpec(rounds=0)


def test_export_refuses_float_input_and_grouped_intervals(w4a4):
    q, _ = w4a4
    with pytest.raises(ExportError, match="kept in float") as e:
        qdq_twin(q)
    assert isinstance(e.value, VitqError)
    with pytest.raises(ExportError, match="per-group intervals"):
        QDQActivation(quant_ops(q)["blocks.0.attn.matmul_scores"].a_quantizer, where="Q")
    with pytest.raises(ExportError, match="per-group intervals"):
        QDQActivation(quant_ops(q)["blocks.0.attn.qkv"].weight_quantizer, where="qkv weight")

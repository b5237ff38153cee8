"""repq-vit as the authors' code (zkkli/RepQ-ViT at a160561) runs it, on the tiny random ViT (tests/conftest.py):
asymmetric per-channel weights on every Linear / Conv including the head, asymmetric per-tensor
activations, the patch embedding's input at 8 bits, the authors' range rule, no output search."""

import pytest
import torch
from conftest import quantize_calibrated

import vitq
from vitq.errors import ConfigError, ExportError, VitqError
from vitq.eval.metrics import sqnr_db
from vitq.export.onnx_qdq import qdq_twin
from vitq.export.packing import save_packed
from vitq.nn.qops import quant_ops
from vitq.quantizers.affine import REPQ_QUANTILES, AffineQuantizer
from vitq.quantizers.log import LogSqrt2Quantizer
from vitq.recipes import Quantizers, Recipe, SearchSpec, get_recipe

# Logits SQNR vs float (dB), tiny ViT, measured: W8A8 28.8, W6A6 19.9, W4A4 8.8.
W8A8_MIN_DB = 26.0


def _calibrated(model, calib, **cfg):
    return quantize_calibrated(model, calib, "repq-vit", **cfg)


@pytest.fixture
def w4a4(tiny_vit, calib_images):
    return _calibrated(tiny_vit, calib_images, w_bits=4, a_bits=4)


def test_recipe_fields():
    r = get_recipe("repq-vit")
    assert r.quantize_head and r.per_channel_weights and r.conv_input_bits == 8
    assert r.search == SearchSpec(init="lp_percentile", objective=None)
    assert r.quantizers == Quantizers(post_layernorm="affine", post_gelu="affine", post_softmax="log_sqrt2",
                                      inputs="affine", weights="affine")
    assert r.transforms == ("repq",)


def test_head_is_quantized_and_config_can_keep_it_float(tiny_vit):
    assert "head" in quant_ops(vitq.quantize(tiny_vit, vitq.QuantConfig(method="repq-vit")))
    assert "head" not in quant_ops(vitq.quantize(tiny_vit, vitq.QuantConfig(method="repq-vit", quantize_head=False)))
    assert "head" not in quant_ops(vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021")))  # others: float


def test_weights_per_channel_asymmetric_everywhere(w4a4):
    q, _ = w4a4
    weighted = {n: op for n, op in quant_ops(q).items() if op.has_weight}
    assert set(weighted) >= {"patch_embed.proj", "head", "blocks.0.attn.qkv", "blocks.1.mlp.fc2"}
    for n, op in weighted.items():
        qw = op.weight_quantizer
        assert type(qw) is AffineQuantizer and qw.axis == 0 and qw.scale.shape == (op.weight.shape[0],), n
        assert qw.bits == 4
        fq = qw(op.weight.detach()).reshape(op.weight.shape[0], -1)
        codes = fq / qw.scale[:, None] + qw.zero_point[:, None]  # unsigned codes 0..15, a zero point each
        assert codes.min() > -1e-3 and codes.max() < 15 + 1e-3 and (codes - codes.round()).abs().max() < 1e-3, n
    zps = torch.cat([op.weight_quantizer.zero_point for op in weighted.values()])
    assert (zps != 8).any() and (zps != zps[0]).any()  # asymmetric, one zero point per channel


def test_patch_embedding_input_is_8_bit_at_w4a4(w4a4):
    q, _ = w4a4
    for n, op in quant_ops(q).items():
        expect = 8 if n == "patch_embed.proj" else 4
        assert op.quantizers()[0].bits == expect, n


def test_plan_a_bits_overrides_the_fixed_conv_input_bits(tiny_vit):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="repq-vit", w_bits=4, a_bits=4,
                                                 plan={"patch_embed.proj": {"a_bits": 6}}))
    assert q.patch_embed.proj.input_quantizer.bits == 6


def test_activations_asymmetric_per_tensor_and_post_gelu_uses_its_codes(w4a4):
    q, _ = w4a4
    for n, op in quant_ops(q).items():
        qa, qb = op.quantizers()
        if n.endswith("matmul_context"):
            assert type(qa) is LogSqrt2Quantizer and type(qb) is AffineQuantizer
        else:
            assert type(qa) is AffineQuantizer and qa.axis is None, n
        if not op.has_weight:
            assert type(qb) is AffineQuantizer and qb.axis is None, n
    for i in range(2):
        fc2 = q.blocks[i].mlp.fc2.input_quantizer
        levels = fc2.levels()
        # GELU's output is >= -0.17: the asymmetric range spends no code below it (one step of rounding
        # aside) and fewer than the symmetric range's half of its codes on negative values
        step = float(fc2.scale)
        assert levels[0] >= -0.17 - step and (levels < 0).sum() < 8, levels


def test_one_pass_no_output_search(w4a4):
    q, rep = w4a4
    assert len(rep.ops) == len(quant_ops(q))
    for r in rep.ops:
        assert r.rounds == 0 and r.history == [] and r.loss_start is None and r.loss_end is None, r.name


def test_reparameterised_inputs_take_the_mean_interval(tiny_vit, calib_images):
    """qkv / fc1 inputs: s~ = mean(s_j), z~ = mean(z_j) of the per-channel intervals (not re-calibrated), as
    the authors' test_quant.py sets them; z~ is their unrounded mean."""
    from vitq.calibration import engine

    seen = {}
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="repq-vit"))
    orig = engine.UnitPreparation.after_init

    def spy(self, name, op):
        seen[name] = self.intervals.get(name)
        orig(self, name, op)

    engine.UnitPreparation.after_init = spy
    try:
        vitq.calibrate(q, calib_images, progress=False)
    finally:
        engine.UnitPreparation.after_init = orig
    for i in range(2):
        for li in ("attn.qkv", "mlp.fc1"):
            s, z = seen[f"blocks.{i}.{li}"]
            qa = q.get_submodule(f"blocks.{i}.{li}").input_quantizer
            assert float(qa.scale) == pytest.approx(s) and float(qa.zero_point) == pytest.approx(z)
    assert seen["blocks.0.attn.proj"] is None


def test_w8a8_logits_close_to_float(tiny_vit, calib_images, test_images):
    with torch.no_grad():
        ref = tiny_vit(test_images)
    q, _ = _calibrated(tiny_vit, calib_images)
    with torch.no_grad():
        out = q(test_images)
    assert sqnr_db(ref, out) >= W8A8_MIN_DB
    assert torch.nn.functional.cosine_similarity(ref, out, dim=-1).min() > 0.99


def test_seeded_same_result(tiny_vit, calib_images, test_images):
    outs = []
    for _ in range(2):
        q, _ = _calibrated(tiny_vit, calib_images, w_bits=6, a_bits=6, seed=3)
        with torch.no_grad():
            outs.append(q(test_images))
    assert torch.equal(outs[0], outs[1])


# -- the range rule, against the authors' code (quant/quantizer.py) transcribed -----------------------------
def _authors_per_tensor(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    best, delta, zp = 1e10, None, None
    for pct in (0.999, 0.9999, 0.99999):
        new_max, new_min = torch.quantile(x.reshape(-1), pct), torch.quantile(x.reshape(-1), 1.0 - pct)
        d = (new_max - new_min) / (2**bits - 1)
        z = (-new_min / d).round()
        xq = (torch.clamp(torch.round(x / d) + z, 0, 2**bits - 1) - z) * d
        score = (x - xq).abs().pow(2).mean()
        if score < best:
            best, delta, zp = score, d, z
    return delta, zp


@pytest.mark.parametrize("bits", [4, 8])
def test_affine_range_rule_matches_the_authors(bits):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4000, generator=g), 8 * torch.rand(5, generator=g)])  # a few outliers
    q = AffineQuantizer(bits)
    q.init_lp(x)
    d, z = _authors_per_tensor(x, bits)
    torch.testing.assert_close(q.scale, d)
    torch.testing.assert_close(q.zero_point, z)
    w = torch.randn(6, 50, generator=g) + torch.arange(6.0)[:, None]
    qw = AffineQuantizer(bits, axis=0, num_channels=6)
    qw.init_lp(w)
    for c in range(6):
        d, z = _authors_per_tensor(w[c], bits)
        torch.testing.assert_close(qw.scale[c], d)
        torch.testing.assert_close(qw.zero_point[c], z)
    assert REPQ_QUANTILES == (0.999, 0.9999, 0.99999)


def test_log_sqrt2_range_rule_scores_the_input():
    g = torch.Generator().manual_seed(0)
    x = torch.softmax(3 * torch.randn(64, 17, generator=g), dim=-1)
    q = LogSqrt2Quantizer(4)
    q.init_lp(x)
    errs = {p: float((q.fake_quant_with(x, torch.quantile(x.reshape(-1), p)) - x).pow(2).mean()) for p in REPQ_QUANTILES}
    torch.testing.assert_close(q.scale, torch.quantile(x.reshape(-1), min(errs, key=errs.get)))


# -- validation and export ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(conv_input_bits=1), dict(quantize_head="yes")], ids=["bits", "head"])
def test_recipe_fields_are_validated(bad):
    with pytest.raises(ConfigError):
        Recipe("x", "x", "x", SearchSpec(), **bad)


@pytest.mark.parametrize("bad", [dict(inputs="log2"), dict(weights="optm"), dict(post_gelu="log_sqrt2")])
def test_quantizer_kinds_are_validated(bad):
    with pytest.raises(ConfigError, match="choose one of"):
        Quantizers(**bad)


def test_config_quantize_head_round_trips():
    for v in (None, True, False):
        c = vitq.QuantConfig(method="repq-vit", quantize_head=v)
        assert vitq.QuantConfig.from_json(c.to_json()) == c
        assert c.recipe().quantize_head is (True if v is None else v)
    with pytest.raises(ConfigError, match="quantize_head"):
        vitq.QuantConfig(quantize_head="no")


def test_lp_percentile_refuses_a_quantizer_without_the_rule(tiny_vit, calib_images):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="repq-vit",
                                                 plan={"blocks.0.mlp.fc2": {"input_quantizer": "uniform"}}))
    with pytest.raises(ConfigError, match="blocks.0.mlp.fc2.*UniformQuantizer.*lp_percentile"):
        vitq.calibrate(q, calib_images, progress=False)


def test_export_refuses_asymmetric_quantizers(w4a4, tmp_path):
    q, _ = w4a4
    # the first quantized op (the patch embedding) has an asymmetric weight; the reparameterised
    # post-LayerNorm zero points, which are not integers, are refused too (tests/export/test_onnx_asymmetric.py)
    with pytest.raises(ExportError, match="asymmetric weight quantizer|not an integer code") as e:
        qdq_twin(q)
    assert isinstance(e.value, VitqError)
    with pytest.raises(ExportError, match="cannot be packed"):
        save_packed(q, tmp_path / "packed")

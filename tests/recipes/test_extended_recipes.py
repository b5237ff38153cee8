"""The extended recipes end to end on the tiny random ViT (tests/conftest.py): mptq and its parts,
ptq4vit, repq-vit, and the fully quantized option."""

import pytest
import torch

import vitq
from vitq.eval.metrics import sqnr_db
from vitq.export.serialization import load_quantized, save_quantized
from vitq.nn.qops import quant_ops
from vitq.quantizers.affine import AffineQuantizer
from vitq.quantizers.base import FloatPassthrough
from vitq.quantizers.log import Log2Quantizer, LogSqrt2Quantizer
from vitq.quantizers.two_region import TwinUniformQuantizer, TwoRegionQuantizer
from vitq.quantizers.uniform import UniformQuantizer

FAST = dict(num_candidates=25, max_iters=3)

# Logits SQNR vs float (dB) measured on the tiny ViT, W8A8 / W4A4:
#   liu2021 32.1 / 9.9, mptq 32.8 / 9.1, mptq-sqb 31.6 / 10.5, mptq-optm 32.1 / 11.0, ptq4vit 30.9 / 10.1,
#   repq-vit 28.8 / 8.8 (the authors' settings; 28.3 / 8.4 before) (a random-init model: the W4A4 figures say little about the methods).
W8A8_MIN_DB = {"mptq": 30.0, "mptq-sqb": 30.0, "mptq-optm": 30.0, "ptq4vit": 28.0, "repq-vit": 25.0}
W4A4_MIN_DB = 6.0


def _run(model, calib, test, **cfg):
    q = vitq.quantize(model, vitq.QuantConfig(**{**FAST, **cfg}))
    rep = vitq.calibrate(q, calib, progress=False)
    with torch.no_grad():
        return q, rep, q(test)


@pytest.mark.parametrize("method", list(W8A8_MIN_DB))
def test_recipe_w8a8_sqnr_and_w4a4_runs(tiny_vit, calib_images, test_images, method):
    with torch.no_grad():
        ref = tiny_vit(test_images)
    q, rep, out = _run(tiny_vit, calib_images, test_images, method=method)
    assert sqnr_db(ref, out) >= W8A8_MIN_DB[method]
    assert len(rep.ops) == len(quant_ops(q)) and all(op.quant_enabled for op in quant_ops(q).values())
    _, _, out4 = _run(tiny_vit, calib_images, test_images, method=method, w_bits=4, a_bits=4)
    assert torch.isfinite(out4).all() and sqnr_db(ref, out4) >= W4A4_MIN_DB


def _input_quantizers(q):
    ops = quant_ops(q)
    return {n: type(op.quantizers()[0]) for n, op in ops.items()}


@pytest.mark.parametrize("method,expect", [
    ("mptq", {"mlp.fc2": TwoRegionQuantizer, "attn.qkv": UniformQuantizer, "attn.matmul_context": UniformQuantizer}),
    ("ptq4vit", {"mlp.fc2": TwoRegionQuantizer, "attn.matmul_context": TwinUniformQuantizer}),
    ("repq-vit", {"attn.qkv": AffineQuantizer, "mlp.fc1": AffineQuantizer, "attn.matmul_context": LogSqrt2Quantizer,
                  "mlp.fc2": AffineQuantizer, "attn.proj": AffineQuantizer}),
])
def test_recipes_put_their_quantizers_in_place(tiny_vit, method, expect):
    kinds = _input_quantizers(vitq.quantize(tiny_vit, vitq.QuantConfig(method=method)))
    for i in range(2):
        for suffix, cls in expect.items():
            assert kinds[f"blocks.{i}.{suffix}"] is cls, (suffix, kinds[f"blocks.{i}.{suffix}"])
    assert kinds["patch_embed.proj"] is {"repq-vit": AffineQuantizer, "ptq4vit": FloatPassthrough}.get(method, UniformQuantizer)
    mode = {"mptq": "optm", "ptq4vit": "ptq4vit"}.get(method)
    if mode:
        assert vitq.quantize(tiny_vit, vitq.QuantConfig(method=method)).blocks[0].mlp.fc2.input_quantizer.mode == mode


@pytest.mark.parametrize("cfg", [dict(method="liu2021-sim", sqb=True, optm=True), dict(method="repq-vit"),
                                 dict(method="liu2021-sim", sqb=True, sqb_proj=True, sqb_shift=False)],
                         ids=["sqb+optm", "repq-vit", "smoothquant+proj"])
def test_calibrated_model_in_float_equals_the_float_model(tiny_vit, calib_images, test_images, cfg):
    """Folding happens inside calibrate(): with quantization off the model still computes the float model
    (recipes without bias correction, which changes biases on purpose)."""
    with torch.no_grad():
        ref = tiny_vit(test_images)
    q, _, _ = _run(tiny_vit, calib_images, test_images, **cfg)
    with vitq.quantization_disabled(q), torch.no_grad():
        torch.testing.assert_close(q(test_images), ref, rtol=0, atol=1e-5)
    assert not torch.equal(q.blocks[0].norm1.weight, tiny_vit.blocks[0].norm1.weight)


def test_fully_quantized_counts_layernorm_ops(tiny_vit, calib_images, test_images):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021", fully_quantized=True, **FAST))
    counts = vitq.count_quant_ops(q)
    # 2 blocks x (qkv, proj, fc1, fc2) + patch embedding + 2 matmuls and 2 LayerNorms per block
    assert counts == {"conv": 1, "linear": 8, "attn_scores": 2, "attn_context": 2, "layernorm": 4}
    assert all(isinstance(q.blocks[i].attn.matmul_context.a_quantizer, Log2Quantizer) for i in range(2))
    assert isinstance(q.norm, torch.nn.LayerNorm) and "norm" not in quant_ops(q)  # final norm outside units
    plain = vitq.count_quant_ops(vitq.quantize(tiny_vit, vitq.QuantConfig()))
    assert "layernorm" not in plain  # off by default
    rep = vitq.calibrate(q, calib_images, progress=False)
    assert len(rep.ops) == sum(counts.values())
    with torch.no_grad():
        ref, out = tiny_vit(test_images), q(test_images)
    # measured 12.7 dB at W8A8 (28.5 dB with the LayerNorm inputs left float): timm initialises the class
    # token at ~1e-6, so on this random model its LayerNorm input is far below the interval the patch
    # tokens set. tests/methods/test_extended_fmnist.py checks the option on a trained model.
    assert sqnr_db(ref, out) >= 10.0


def test_minmax_with_optm_uses_initial_state(tiny_vit, calib_images):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="minmax", optm=True))
    vitq.calibrate(q, calib_images, progress=False)
    fq = q.blocks[0].mlp.fc2.input_quantizer
    assert isinstance(fq, TwoRegionQuantizer) and fq.enabled and fq.ratio >= 1


def test_save_load_round_trip_keeps_folds_and_quantizers(tiny_vit, calib_images, test_images, tmp_path):
    q, _, out = _run(tiny_vit, calib_images, test_images, method="mptq", optm_softmax=True, fully_quantized=True,
                     w_bits=6, a_bits=6)
    vitq.freeze(q)
    save_quantized(q, tmp_path / "m")
    r = load_quantized(tmp_path / "m", model=tiny_vit)
    with torch.no_grad():
        torch.testing.assert_close(r(test_images), out, rtol=0, atol=1e-6)
    fq = r.blocks[1].mlp.fc2.input_quantizer
    assert isinstance(fq, TwoRegionQuantizer) and fq.ratio == q.blocks[1].mlp.fc2.input_quantizer.ratio

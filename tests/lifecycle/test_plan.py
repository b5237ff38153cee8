"""Per-op plan entries reach the quantized model: bits, granularity, quantizer kind, recipe, float."""

import pytest
import torch

import vitq
from vitq.errors import ConfigError
from vitq.nn.qops import QuantLinear, quant_ops
from vitq.quantizers.two_region import TwoRegionQuantizer
from vitq.quantizers.uniform import UniformQuantizer


def test_plan_options_reach_the_ops(tiny_vit, calib_images):
    cfg = vitq.QuantConfig(w_bits=6, a_bits=6, num_candidates=6, max_iters=1, plan={
        "blocks.0.mlp.fc2": {"w_bits": 4, "per_channel_weights": True, "input_quantizer": "optm", "method": "mse"},
        "blocks.1.attn.matmul_context": {"input_quantizer": "log2"},
        "blocks.1.mlp.fc1": {"enabled": False},
    })
    q = vitq.quantize(tiny_vit, cfg)
    ops = quant_ops(q)
    fc2 = ops["blocks.0.mlp.fc2"]
    assert fc2.weight_quantizer.bits == 4 and fc2.weight_quantizer.scale.numel() == fc2.out_features
    assert isinstance(fc2.input_quantizer, TwoRegionQuantizer)
    assert ops["blocks.0.mlp.fc1"].weight_quantizer.scale.numel() == 1  # per tensor elsewhere
    assert type(ops["blocks.1.attn.matmul_context"].a_quantizer).__name__ == "Log2Quantizer"
    assert "blocks.1.mlp.fc1" not in ops and not isinstance(q.get_submodule("blocks.1.mlp.fc1"), QuantLinear)
    rep = vitq.calibrate(q, calib_images, progress=False)
    by_name = {r.name: r for r in rep.ops}
    assert by_name["blocks.0.mlp.fc2"].loss_start > 0  # MSE (>= 0), not the default recipe's -Pearson
    assert by_name["blocks.0.mlp.fc1"].loss_start < 0
    vitq.freeze(q)
    with torch.no_grad():
        assert torch.isfinite(q(calib_images)).all()


def test_plan_key_matching_no_op_is_an_error(tiny_vit):
    with pytest.raises(ConfigError, match=r"plan keys \['blocks.9.attn.qkv'\] match no quantized op"):
        vitq.quantize(tiny_vit, vitq.QuantConfig(plan={"blocks.9.attn.qkv": {"w_bits": 4}}))


def test_plan_kind_that_does_not_fit_the_op_is_named(tiny_vit):
    with pytest.raises(ConfigError, match="input_quantizer='log2' does not apply to op blocks.0.mlp.fc1"):
        vitq.quantize(tiny_vit, vitq.QuantConfig(plan={"blocks.0.mlp.fc1": {"input_quantizer": "log2"}}))
    with pytest.raises(ConfigError, match="attention product"):
        vitq.quantize(tiny_vit, vitq.QuantConfig(plan={"blocks.0.attn.matmul_scores": {"enabled": False}}))


def test_recipe_default_granularity_and_override(tiny_vit):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(per_channel_weights=True))
    assert all(op.weight_quantizer.scale.numel() > 1 for op in quant_ops(q).values() if op.has_weight)
    q = vitq.quantize(tiny_vit, vitq.QuantConfig())
    assert all(isinstance(op.weight_quantizer, UniformQuantizer) and op.weight_quantizer.scale.numel() == 1
               for op in quant_ops(q).values() if op.has_weight)

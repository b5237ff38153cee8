"""Units and a nuclear / hessian search on every adapter family (tiny random models)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from transformers import (  # noqa: E402
    Dinov2Config,
    Dinov2ForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

import vitq  # noqa: E402
from vitq.mp import find_units, search_plan  # noqa: E402
from vitq.nn.qops import quant_ops  # noqa: E402


def build(kind):
    torch.manual_seed(0)
    if kind == "hf-vit":
        return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                   image_size=32, patch_size=8, num_labels=10, intermediate_size=64))
    if kind == "hf-dinov2":
        return Dinov2ForImageClassification(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         image_size=32, patch_size=8, num_labels=10, mlp_ratio=2))
    if kind == "hf-swin":
        return SwinForImageClassification(SwinConfig(image_size=16, patch_size=2, embed_dim=16, depths=[2, 2],
                                                     num_heads=[1, 2], window_size=4, num_labels=10)).eval()
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=16, patch_size=2,
                             embed_dim=24, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=10).eval()


@pytest.mark.parametrize("kind,blocks", [("hf-vit", 2), ("hf-dinov2", 2), ("hf-swin", 4), ("timm-swin", 4)])
def test_units_and_search_on_each_family(kind, blocks):
    model = build(kind)
    size = 16 if "swin" in kind else 32
    calib = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    q = vitq.quantize(model, vitq.QuantConfig())
    ops = quant_ops(q)
    units, fixed = find_units(q, calib[:1])
    assert [u.kind for u in units] == ["msa", "mlp"] * blocks
    for msa, mlp in zip(units[::2], units[1::2]):
        assert sorted(ops[n].role for n in msa.ops).count("linear") >= 2  # qkv (or q, k, v) and the projection
        assert {ops[n].role for n in msa.ops} >= {"attn_scores", "attn_context"}
        assert ops[msa.feature_op].role == "attn_context"
        assert [ops[n].role for n in mlp.ops] == ["linear", "linear"]
    assert all(ops[n].role in ("conv", "linear") for n in fixed)  # patch embedding, patch merging
    assert set(ops) == {n for u in units for n in u.ops} | set(fixed)
    for method in ("nuclear", "hessian"):
        res = search_plan(model, calib, method=method, bits=6, hessian_samples=1)
        assert res.size_mb <= res.budget_mb and len(res.unit_bits) == 2 * blocks

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.errors import UnsupportedModelError


def _expected_counts(depth: int, head: bool = False):
    # per block: qkv, proj, fc1, fc2 Linears + Q·K^T + attn·V; plus the patch-embedding conv
    return {"conv": 1, "linear": 4 * depth + (1 if head else 0), "attn_scores": depth, "attn_context": depth}


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_tiny_patch16_224", {}),
        ("deit_tiny_distilled_patch16_224", {}),
        ("vit_small_patch14_dinov2", {"patch_size": 8, "init_values": 1e-5}),
        ("vit_small_patch14_reg4_dinov2", {"patch_size": 8, "init_values": 1e-5}),
    ],
    ids=["vit", "deit-distilled", "dinov2-layerscale", "dinov2-registers"],
)
def test_every_target_op_wrapped_and_disabled_is_float(name, kwargs):
    base = dict(img_size=32, embed_dim=48, depth=2, num_heads=2, num_classes=10, patch_size=8)
    base.update(kwargs)
    from vitq.models.loading import create_model

    torch.manual_seed(0)
    model = create_model(f"timm:{name}", **base)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax"))
    assert vitq.count_quant_ops(q) == _expected_counts(2)
    with torch.no_grad():
        out = q(x)
    assert (out - ref).abs().max().item() <= 1e-5
    vitq.calibrate(q, x, progress=False)
    vitq.set_quantization_enabled(q, False)
    with torch.no_grad():
        assert (q(x) - ref).abs().max().item() <= 1e-5


def test_quantize_does_not_touch_the_float_model(tiny_vit, calib_images):
    with torch.no_grad():
        ref = tiny_vit(calib_images)
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021-sim+bc", num_candidates=5, max_iters=1))
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    with torch.no_grad():
        assert torch.equal(tiny_vit(calib_images), ref)
    assert not any(type(m).__name__.startswith("Quant") for m in tiny_vit.modules())


def test_head_is_float_by_default_and_quantized_on_request():
    model = make_tiny_vit()
    q = vitq.quantize(model)
    assert type(q.head).__name__ == "Linear"
    q2 = vitq.quantize(model, vitq.QuantConfig(quantize_head=True))
    assert vitq.count_quant_ops(q2) == _expected_counts(2, head=True)


def test_unsupported_model_names_class_and_families():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match="Sequential.*Supported families: timm-vit"):
        vitq.quantize(model)

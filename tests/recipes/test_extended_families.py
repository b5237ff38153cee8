"""The extended recipes on other model families: Hugging Face ViT / DINOv2 (folding by data flow,
float model unchanged), and a clear error where a part has no place (timm Swin)."""

import pytest
import torch

import vitq
from vitq.errors import UnsupportedModelError
from vitq.eval.metrics import logits_of
from vitq.quantizers.two_region import TwoRegionQuantizer

transformers = pytest.importorskip("transformers")
from transformers import Dinov2Config, Dinov2ForImageClassification, ViTConfig, ViTForImageClassification  # noqa: E402

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, num_labels=10)


def _hf(kind):
    torch.manual_seed(0)
    m = {"vit": lambda: ViTForImageClassification(ViTConfig(**COMMON, intermediate_size=64)),
         "dinov2": lambda: Dinov2ForImageClassification(Dinov2Config(**COMMON, mlp_ratio=2))}[kind]().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # asymmetric LayerNorm outputs, as in trained models
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g))
    return m


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_hf_sqb_optm_folds_and_keeps_float_model(kind):
    model = _hf(kind)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = logits_of(model(x))
    q = vitq.quantize(model, vitq.QuantConfig(method="liu2021-sim", sqb=True, sqb_proj=True, optm=True,
                                              num_candidates=10, max_iters=2))
    fc2 = [m for n, m in q.named_modules() if isinstance(getattr(m, "input_quantizer", None), TwoRegionQuantizer)]
    assert len(fc2) == 2  # one post-GELU Linear per layer
    vitq.calibrate(q, x, progress=False)
    with vitq.quantization_disabled(q), torch.no_grad():
        torch.testing.assert_close(logits_of(q(x)), ref, rtol=0, atol=1e-5)
    first_norm = next(n for n, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm))
    assert not torch.equal(q.get_submodule(first_norm).weight, model.get_submodule(first_norm).weight)  # folded
    with torch.no_grad():
        assert torch.isfinite(logits_of(q(x))).all()


def test_swin_folds_only_its_direct_layernorm_outputs():
    """Swin's norm1 output is window-partitioned (and padded) before qkv, so only norm2 -> fc1 is folded;
    the float model stays unchanged."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4, window_size=2,
                          embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = m(x)
    q = vitq.quantize(m, vitq.QuantConfig(method="liu2021-sim", sqb=True, num_candidates=10, max_iters=1))
    vitq.calibrate(q, x, progress=False)
    blk, blk0 = q.layers[0].blocks[0], m.layers[0].blocks[0]
    assert torch.equal(blk.norm1.weight, blk0.norm1.weight) and not torch.equal(blk.norm2.weight, blk0.norm2.weight)
    with vitq.quantization_disabled(q), torch.no_grad():
        torch.testing.assert_close(q(x), ref, rtol=0, atol=1e-5)


def test_optm_without_gelu_is_a_clear_error():
    from conftest import make_tiny_vit

    with pytest.raises(UnsupportedModelError, match="recipe .mptq-optm.: post-GELU quantizer .optm. needs a GELU module of VisionTransformer"):
        vitq.quantize(make_tiny_vit(act_layer="relu"), vitq.QuantConfig(method="mptq-optm"))

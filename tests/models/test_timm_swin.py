"""timm SwinTransformer: window attention swapped, PatchMerging quantized, exact when disabled, calibrates."""

from __future__ import annotations

import pytest
import torch
from helpers_families import (
    MAX_DISABLED_DIFF,
    MIN_SQNR_DB,
    calibrated_sqnr,
    disabled_max_diff,
    expected_counts,
    images,
    logits,
    scale_up_,
)

import vitq
from vitq.errors import UnsupportedModelError
from vitq.models.base import get_adapter
from vitq.nn.qops import QuantLinear

timm = pytest.importorskip("timm")
from timm.models.swin_transformer import WindowAttention  # noqa: E402

from vitq.models.timm_swin import QuantTimmWindowAttention  # noqa: E402

IMG = 16
DEPTHS = (2, 2)


def make_swin(seed: int = 0):
    """16x16 input, patch 2 -> 8x8 grid, window 4: stage 0 has 4 windows and a shifted block (SW-MSA),
    stage 1 (PatchMerging to 4x4) a single window."""
    torch.manual_seed(seed)
    m = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=IMG, patch_size=2, embed_dim=24,
        depths=DEPTHS, num_heads=(1, 2), window_size=4, num_classes=10,
    ).eval()
    scale_up_(m.head.fc)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, WindowAttention):
                mod.relative_position_bias_table.normal_(0.0, 0.5)
    return m


def _counts(head: bool = False):
    # per block qkv, proj, fc1, fc2; one PatchMerging.reduction per stage after the first; patch conv
    blocks = sum(DEPTHS)
    return expected_counts(linear=4 * blocks + (len(DEPTHS) - 1) + int(head), blocks=blocks)


@pytest.fixture(scope="module")
def swin():
    return make_swin()


def test_layout_and_every_op_wrapped(swin):
    assert swin.layers[0].blocks[1].shift_size == (2, 2)  # the mask path is exercised
    q = vitq.quantize(swin)
    assert vitq.count_quant_ops(q) == _counts()
    attn = [m for m in q.modules() if isinstance(m, WindowAttention)]
    assert len(attn) == sum(DEPTHS) and all(type(m) is QuantTimmWindowAttention for m in attn)
    adapter = get_adapter(swin)
    assert adapter.name == "timm-swin"
    assert [n for n, _ in adapter.calibration_units(q)] == [
        "patch_embed", "layers.0.blocks.0", "layers.0.blocks.1", "layers.1.downsample",
        "layers.1.blocks.0", "layers.1.blocks.1", "head.fc",
    ]
    dc = q.vitq_info.data_config
    assert dc.input_size == (3, IMG, IMG) and len(dc.mean) == 3


def test_disabled_quantization_is_float(swin):
    x = images(4, IMG, seed=1)
    ref = logits(swin, x)
    assert ref.abs().max() > 0.1
    q = vitq.quantize(swin)
    diff = disabled_max_diff(q, ref, x)
    print(f"timm-swin disabled max abs diff {diff:.3g}")
    assert diff <= MAX_DISABLED_DIFF
    # the float model is untouched by quantize()
    assert not any(type(m).__name__.startswith("Quant") for m in swin.modules())


@pytest.mark.parametrize(
    "config",
    [vitq.QuantConfig(method="minmax"),
     vitq.QuantConfig(method="liu2021", num_candidates=8, max_iters=1, quantize_head=True)],
    ids=["minmax", "liu2021-head"],
)
def test_calibrate_w8a8_sqnr(swin, config):
    q, sqnr = calibrated_sqnr(swin, config, images(8, IMG, seed=2), images(8, IMG, seed=3))
    print(f"timm-swin {config.method} quantize_head={config.quantize_head}: SQNR {sqnr:.1f} dB")
    assert sqnr >= MIN_SQNR_DB
    assert vitq.get_quant_info(q).calibrated


def test_head_float_by_default_and_quantized_on_request(swin):
    q = vitq.quantize(swin)
    assert type(q.head.fc) is torch.nn.Linear
    q2 = vitq.quantize(swin, vitq.QuantConfig(quantize_head=True))
    assert type(q2.head.fc) is not torch.nn.Linear and isinstance(q2.head.fc, QuantLinear)
    assert vitq.count_quant_ops(q2) == _counts(head=True)


def test_swin_v2_is_not_matched():
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    v2 = SwinTransformerV2(img_size=16, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 1),
                           window_size=4, num_classes=10)
    with pytest.raises(UnsupportedModelError, match="SwinTransformerV2.*timm-swin"):
        vitq.quantize(v2)

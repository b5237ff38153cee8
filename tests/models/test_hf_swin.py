"""Hugging Face Swin: window attention (relative position bias + shift mask) swapped, exact when disabled,
PatchMerging quantized, calibrates, head float by default."""

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
from vitq.models.base import get_adapter
from vitq.nn.qops import QuantLinear

transformers = pytest.importorskip("transformers")
from transformers import SwinConfig, SwinForImageClassification, SwinModel  # noqa: E402
from transformers.models.swin.modeling_swin import SwinAttention  # noqa: E402

from vitq.eval.metrics import logits_of  # noqa: E402
from vitq.models.hf_swin import QuantSwinAttention  # noqa: E402

IMG = 16
DEPTHS = [2, 2]


def make_swin(cls=SwinForImageClassification, seed: int = 0):
    """16x16 input, patch 2 -> 8x8 grid, window 4: stage 0 has 4 windows and a shifted block (SW-MSA),
    then PatchMerging (end of stage 0 in HF) to 4x4, one window."""
    torch.manual_seed(seed)
    config = SwinConfig(image_size=IMG, patch_size=2, embed_dim=16, depths=DEPTHS, num_heads=[1, 2], window_size=4,
                        num_labels=10)
    model = cls(config).eval()
    with torch.no_grad():  # HF initialises the bias tables to zero: make the bias path matter
        for m in model.modules():
            if isinstance(m, SwinAttention):
                m.relative_position_bias.relative_position_bias_table.normal_(0.0, 0.5)
    if isinstance(getattr(model, "classifier", None), torch.nn.Linear):
        scale_up_(model.classifier)
    return model


def _counts(head: bool = False):
    # per block q, k, v, o, fc1, fc2; one PatchMerging.reduction per stage but the last; patch conv
    blocks = sum(DEPTHS)
    return expected_counts(linear=6 * blocks + (len(DEPTHS) - 1) + int(head), blocks=blocks)


@pytest.fixture(scope="module")
def swin():
    return make_swin()


def test_layout_and_every_op_wrapped(swin):
    assert swin.swin.encoder.layers[0].blocks[1].shift_size == 2  # the mask path is exercised
    q = vitq.quantize(swin)
    assert vitq.count_quant_ops(q) == _counts()
    attn = [m for m in q.modules() if isinstance(m, SwinAttention)]
    assert len(attn) == sum(DEPTHS) and all(type(m) is QuantSwinAttention for m in attn)
    adapter = get_adapter(swin)
    assert adapter.name == "hf-swin"
    assert [n for n, _ in adapter.calibration_units(q)] == [
        "swin.embeddings", "swin.encoder.layers.0.blocks.0", "swin.encoder.layers.0.blocks.1",
        "swin.encoder.layers.0.downsample", "swin.encoder.layers.1.blocks.0", "swin.encoder.layers.1.blocks.1",
        "classifier",
    ]
    dc = q.vitq_info.data_config
    assert dc.input_size == (3, IMG, IMG) and dc.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("cls", [SwinForImageClassification, SwinModel])
def test_disabled_quantization_is_float(cls):
    model = make_swin(cls)
    x = images(4, IMG, seed=1)
    ref = logits(model, x, logits_of)
    q = vitq.quantize(model)
    assert vitq.count_quant_ops(q) == _counts()
    diff = disabled_max_diff(q, ref, x, logits_of)
    print(f"hf-swin {cls.__name__}: disabled max abs diff {diff:.3g} (|out| max {ref.abs().max():.2f})")
    assert diff <= MAX_DISABLED_DIFF


@pytest.mark.parametrize(
    "config",
    [vitq.QuantConfig(method="minmax"),
     vitq.QuantConfig(method="liu2021", num_candidates=8, max_iters=1, quantize_head=True)],
    ids=["minmax", "liu2021-head"],
)
def test_calibrate_w8a8_sqnr(swin, config):
    _, sqnr = calibrated_sqnr(swin, config, images(8, IMG, seed=2), images(8, IMG, seed=3), logits_of)
    print(f"hf-swin {config.method} quantize_head={config.quantize_head}: SQNR {sqnr:.1f} dB")
    assert sqnr >= MIN_SQNR_DB


def test_head_float_by_default_and_quantized_on_request(swin):
    q = vitq.quantize(swin)
    assert type(q.classifier) is torch.nn.Linear
    q2 = vitq.quantize(swin, vitq.QuantConfig(quantize_head=True))
    assert isinstance(q2.classifier, QuantLinear)
    assert vitq.count_quant_ops(q2) == _counts(head=True)

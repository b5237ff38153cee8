"""The generic adapter: any vision transformer, no per-family code (vitq.models.generic, vitq.nn.capture).

The fast subset of the zoo (timm and HF, small random models) runs end to end here; the whole zoo is
``benchmarks/zoo.py``. Bad input: a model without attention, attention vitq cannot capture.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import vitq
from vitq.bench.zoo import MAX_DISABLED_DIFF, MIN_SQNR_DB, run_entry, select
from vitq.data.transforms import DataConfig
from vitq.errors import PartialQuantizationError, PartialQuantizationWarning, UnsupportedModelError
from vitq.nn.capture import CapturedAttentionMixin

FAST = select(fast=True)


def test_fast_subset_covers_both_libraries():
    assert len(FAST) >= 6 and {e.source for e in FAST} == {"timm", "hf"}


@pytest.mark.parametrize("entry", FAST, ids=[e.model for e in FAST])
def test_zoo_model_fully_quantized_and_exported(entry):
    row = run_entry(entry, num_calib=4, num_test=4, max_iters=1, num_candidates=8)
    assert "error" not in row, row.get("error")
    assert row["linears_quantized"] == row["linears"] > 0
    assert row["attn_matmuls_quantized"] == row["attn_matmuls"] > 0
    assert row["uncaptured"] == []
    assert row["disabled_max_abs_diff"] <= MAX_DISABLED_DIFF
    assert row["w8a8_sqnr_db"] >= MIN_SQNR_DB
    assert row["export_ok"], row.get("export_error")
    assert row["ort_sqnr_db"] is None or row["ort_sqnr_db"] > 30
    assert row["passed"]


class _Attention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, einsum: bool = False):
        super().__init__()
        self.qkv, self.proj, self.heads, self.einsum = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads, einsum

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.einsum:  # products vitq does not capture
            attn = torch.einsum("bhnd,bhmd->bhnm", q, k).softmax(-1)
            out = torch.einsum("bhnm,bhmd->bhnd", attn, v)
        else:
            out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _TinyTransformer(nn.Module):
    """Patch embedding, two attention blocks, a head: a user's own model, no library class."""

    def __init__(self, einsum: bool = False):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.blocks = nn.ModuleList([_Attention(einsum=einsum) for _ in range(2)])
        self.head = nn.Linear(16, 5)
        self.vitq_data_config = DataConfig(input_size=(3, 16, 16))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x.mean(1))


def test_custom_model_is_captured_and_calibrated():
    torch.manual_seed(0)
    model = _TinyTransformer().eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    q = vitq.quantize(model, vitq.QuantConfig(method="liu2021", num_candidates=8, max_iters=1))
    info = vitq.get_quant_info(q)
    # a custom model names no classifier head: its last Linear is quantized like every other one
    assert info.adapter == "generic" and info.units == ["embed", "blocks.0", "blocks.1", "head"]
    assert isinstance(q.blocks[0], CapturedAttentionMixin) and isinstance(q.blocks[0], _Attention)
    assert info.coverage["attn_matmul"] == {"total": 4, "quantized": 4}
    assert info.coverage["linear"] == {"total": 5, "quantized": 5} and info.coverage["conv"]["quantized"] == 1
    assert info.coverage["kept_float"] == [] and info.coverage["uncaptured"] == []
    with vitq.quantization_disabled(q), torch.no_grad():
        assert (q(x) - ref).abs().max().item() <= 1e-5
    report = vitq.calibrate(q, x, progress=False)
    roles = [o.role for o in report.ops]
    assert roles.count("attn_scores") == roles.count("attn_context") == 2  # the search calibrated them
    assert "blocks.0.matmul_scores.a_quantizer.scale" in q.state_dict()  # state in buffers: saves and moves


def test_model_without_attention_is_an_error_naming_its_class():
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    cnn(torch.randn(1, 3, 8, 8))
    cnn.vitq_data_config = DataConfig(input_size=(3, 8, 8))
    with pytest.raises(UnsupportedModelError, match=r"Sequential has no transformer blocks.*no attention product"):
        vitq.quantize(cnn)


def test_timm_cnn_is_an_error_naming_its_class():
    timm = pytest.importorskip("timm")
    with pytest.raises(UnsupportedModelError, match=r"ResNet has no transformer blocks"):
        vitq.quantize(timm.create_model("resnet10t", pretrained=False, num_classes=4))


def test_attention_vitq_cannot_capture_is_named_or_an_error_under_strict():
    model = _TinyTransformer(einsum=True).eval()
    with pytest.warns(PartialQuantizationWarning, match=r"blocks\.0: 2 attention products.*blocks\.1: 2"):
        q = vitq.quantize(model)
    cov = vitq.get_quant_info(q).coverage
    assert cov["attn_matmul"] == {"total": 4, "quantized": 0}
    assert cov["uncaptured"] == ["blocks.0: 2 attention products", "blocks.1: 2 attention products"]
    with pytest.raises(PartialQuantizationError, match=r"_TinyTransformer: vitq cannot quantize 2 op"):
        vitq.quantize(model, strict=True)

"""Hugging Face ViT / DeiT / DINOv2: attention swapped, exact when disabled, calibrates, heads float by default."""

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
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import QuantLinear

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from vitq.eval.metrics import logits_of  # noqa: E402

IMG, LAYERS = 32, 2
COMMON = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, image_size=IMG, patch_size=8,
              num_labels=10)
HEADS = ("classifier", "cls_classifier", "distillation_classifier")


def build(kind: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    vit_kw = dict(COMMON, intermediate_size=64, **overrides)
    dino_kw = dict(COMMON, mlp_ratio=2, **overrides)
    model = {
        "vit": lambda: ViTForImageClassification(ViTConfig(**vit_kw)),
        "vit-model": lambda: ViTModel(ViTConfig(**vit_kw)),  # with pooler
        "deit": lambda: DeiTForImageClassification(DeiTConfig(**vit_kw)),
        "deit-teacher": lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**vit_kw)),
        "deit-model": lambda: DeiTModel(DeiTConfig(**vit_kw), add_pooling_layer=False),
        "dinov2": lambda: Dinov2ForImageClassification(Dinov2Config(**dino_kw)),
        "dinov2-swiglu": lambda: Dinov2ForImageClassification(Dinov2Config(**dino_kw, use_swiglu_ffn=True)),
        "dinov2-model": lambda: Dinov2Model(Dinov2Config(**dino_kw)),
    }[kind]().eval()
    for name in HEADS:
        if isinstance(getattr(model, name, None), torch.nn.Linear):
            scale_up_(getattr(model, name))
    return model


def head_names(kind: str) -> list[str]:
    return {"vit-model": ["pooler.dense"], "deit-teacher": ["cls_classifier", "distillation_classifier"],
            "deit-model": [], "dinov2-model": []}.get(kind, ["classifier"])


def counts(kind: str, head: bool = False):
    mlp = 3 if kind == "dinov2-swiglu" else 2  # fc1/fc2, or SwiGLU gate/up/down
    n_heads = len(head_names(kind)) if head else 0
    return expected_counts(linear=(4 + mlp) * LAYERS + n_heads, blocks=LAYERS)


ALL = ["vit", "vit-model", "deit", "deit-teacher", "deit-model", "dinov2", "dinov2-swiglu", "dinov2-model"]


@pytest.mark.parametrize("kind", ALL)
def test_every_op_wrapped_and_disabled_is_float(kind):
    model = build(kind)
    x = images(4, IMG, seed=1)
    ref = logits(model, x, logits_of)
    q = vitq.quantize(model)
    assert vitq.count_quant_ops(q) == counts(kind)
    attn = [m for m in q.modules() if isinstance(m, QuantAttentionMixin)]
    assert len(attn) == LAYERS
    adapter = get_adapter(model)
    assert adapter.name == "hf-vit" and adapter.head_names(q) == head_names(kind)
    units = [n for n, _ in adapter.calibration_units(q)]
    assert units[0].endswith("embeddings") and len(units) == 1 + LAYERS + len(head_names(kind))
    diff = disabled_max_diff(q, ref, x, logits_of)
    print(f"{kind}: disabled max abs diff {diff:.3g} (|logits| max {ref.abs().max():.2f})")
    assert diff <= MAX_DISABLED_DIFF
    q_head = vitq.quantize(model, vitq.QuantConfig(quantize_head=True))
    assert vitq.count_quant_ops(q_head) == counts(kind, head=True)


@pytest.mark.parametrize("kind", ["vit", "deit-teacher", "dinov2"])
def test_calibrate_w8a8_sqnr(kind):
    model = build(kind)
    calib, test = images(8, IMG, seed=2), images(8, IMG, seed=3)
    for config in (vitq.QuantConfig(method="minmax"),
                   vitq.QuantConfig(method="liu2021", num_candidates=8, max_iters=1, quantize_head=True)):
        q, sqnr = calibrated_sqnr(model, config, calib, test, logits_of)
        print(f"{kind} {config.method} quantize_head={config.quantize_head}: SQNR {sqnr:.1f} dB")
        assert sqnr >= MIN_SQNR_DB


def test_heads_float_by_default_and_quantized_on_request():
    model = build("deit-teacher")
    q = vitq.quantize(model)
    assert type(q.cls_classifier) is torch.nn.Linear and type(q.distillation_classifier) is torch.nn.Linear
    q2 = vitq.quantize(model, vitq.QuantConfig(quantize_head=True))
    assert isinstance(q2.cls_classifier, QuantLinear) and isinstance(q2.distillation_classifier, QuantLinear)


def test_eager_float_model_and_output_attentions():
    model = build("vit", attn_implementation="eager")
    x = images(2, IMG, seed=4)
    with torch.no_grad():
        ref = model(x, output_attentions=True)
    q = vitq.quantize(model)
    with torch.no_grad(), vitq.quantization_disabled(q):
        out = q(x, output_attentions=True)
    assert torch.equal(out.logits, ref.logits)  # same eager computation, op for op
    assert len(out.attentions) == LAYERS
    assert all(torch.equal(a, b) for a, b in zip(out.attentions, ref.attentions))


def test_data_config_and_logits_of():
    assert vitq.quantize(build("vit")).vitq_info.data_config.mean == (0.5, 0.5, 0.5)
    dc = vitq.quantize(build("dinov2", num_channels=1)).vitq_info.data_config
    assert dc.input_size == (1, IMG, IMG) and len(dc.mean) == len(dc.std) == 1
    dc = vitq.quantize(build("deit")).vitq_info.data_config
    assert dc.input_size == (3, IMG, IMG) and dc.mean == (0.485, 0.456, 0.406) and dc.crop_pct == 0.875
    t = torch.ones(2, 3)
    assert logits_of(t) is t
    out = build("deit-teacher")(images(2, IMG, seed=5))
    assert logits_of(out) is out.logits

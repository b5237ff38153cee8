"""Tiny random models of every supported family for the export tests (CPU, well under a second each)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

import vitq
from vitq.eval.metrics import logits_of


def _scale_up(linear: nn.Module, std: float = 0.5) -> None:
    """Larger head weights: logits O(1), so absolute differences mean something."""
    with torch.no_grad():
        linear.weight.normal_(0.0, std)
        if linear.bias is not None:
            linear.bias.normal_(0.0, 0.1)


def _timm(name: str, **kw) -> nn.Module:
    from vitq.models.loading import create_model

    m = create_model(f"timm:{name}", num_classes=10, **kw)
    for head in ("head", "head_dist"):
        if isinstance(getattr(m, head, None), nn.Linear):
            _scale_up(getattr(m, head))
    if hasattr(m, "head") and isinstance(getattr(m.head, "fc", None), nn.Linear):
        _scale_up(m.head.fc)
    return m


def _hf(kind: str) -> nn.Module:
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        Dinov2Config,
        Dinov2ForImageClassification,
        SwinConfig,
        SwinForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                  num_labels=10)
    if kind == "hf-vit":
        m = ViTForImageClassification(ViTConfig(**common, intermediate_size=64))
    elif kind == "hf-deit":
        m = DeiTForImageClassificationWithTeacher(DeiTConfig(**common, intermediate_size=64))
    elif kind == "hf-dinov2":
        m = Dinov2ForImageClassification(Dinov2Config(**common, mlp_ratio=2))
    else:
        m = SwinForImageClassification(SwinConfig(image_size=16, patch_size=2, embed_dim=16, depths=[2, 2],
                                                  num_heads=[1, 2], window_size=4, num_labels=10))
    for head in ("classifier", "cls_classifier", "distillation_classifier"):
        if isinstance(getattr(m, head, None), nn.Linear):
            _scale_up(getattr(m, head))
    return m.eval()


def make_family_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny float model of ``family`` (see :data:`FAMILIES`)."""
    torch.manual_seed(seed)
    if family == "timm-vit":
        return _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)
    if family == "timm-deit-distilled":
        return _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                     num_heads=2)
    if family == "timm-dinov2-reg":
        return _timm("vit_small_patch14_reg4_dinov2", img_size=28, patch_size=7, embed_dim=48, depth=2,
                     num_heads=2, init_values=0.5)
    if family == "timm-swin":
        return _timm("swin_tiny_patch4_window7_224", img_size=16, patch_size=2, embed_dim=24, depths=(2, 2),
                     num_heads=(1, 2), window_size=4)
    return _hf(family)


FAMILIES = ["timm-vit", "timm-deit-distilled", "timm-dinov2-reg", "timm-swin", "hf-vit", "hf-deit", "hf-dinov2",
            "hf-swin"]


def images_for(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    from vitq.models.loading import model_data_config

    c, h, w = model_data_config(model).input_size
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def calibrated(model: nn.Module, config: vitq.QuantConfig, calib: torch.Tensor, freeze: bool = True) -> nn.Module:
    q = vitq.quantize(model, config)
    vitq.calibrate(q, calib, progress=False)
    return vitq.freeze(q) if freeze else q


@torch.no_grad()
def sim_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return logits_of(model(x)).float()


def check_ort_integer_matmuls(qmodel: nn.Module, float_model: nn.Module, images: torch.Tensor, path,
                              activation_type: str, extra_matmuls: int) -> None:
    """Export ``qmodel``, check ONNX Runtime runs every Linear and attention product as an integer MatMul
    (plus ``extra_matmuls`` for ops exported as two), and that it matches the simulation far closer than
    the simulation matches the float model."""
    from vitq.eval.metrics import sqnr_db
    from vitq.export.onnx_export import export_onnx
    from vitq.export.ort_runtime import OrtModel, optimized_op_counts
    from vitq.nn.qops import quant_ops

    path = export_onnx(qmodel, path, activation_type=activation_type)
    counts = optimized_op_counts(path)
    linears_and_attention = sum(op.role != "conv" for op in quant_ops(qmodel).values())
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] == linears_and_attention + extra_matmuls
    y_ort = OrtModel(path, threads=1)(images)
    y_sim, y_float = sim_logits(qmodel, images), sim_logits(float_model, images)
    assert sqnr_db(y_sim, y_ort) > sqnr_db(y_float, y_sim) + 15
    assert (y_ort.argmax(-1) == y_sim.argmax(-1)).float().mean() >= 0.95


@contextmanager
def registered_pc_recipe(name: str, quantizers) -> Iterator[str]:
    """``liu2021-pc`` with other ``quantizers``, registered as ``name`` for the duration (yields the name)."""
    from vitq.recipes import Recipe, get_recipe
    from vitq.recipes.base import RECIPES

    base = get_recipe("liu2021-pc")
    RECIPES[name] = Recipe(name, base.summary, base.reference, base.search, quantizers, per_channel_weights=True)
    try:
        yield name
    finally:
        del RECIPES[name]

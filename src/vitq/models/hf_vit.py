"""Adapter for Hugging Face ViT-style encoders: ViT, DeiT (incl. the distilled "with teacher" model) and DINOv2.

In transformers 5.x each of these has one attention module (``ViTAttention``, ``DeiTAttention``,
``Dinov2Attention``: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` Linears) that calls a pluggable
attention function (eager, SDPA, flash, ...). The quantized subclasses here always run the eager
computation with Q·K^T and attn·V as :class:`~vitq.nn.qops.QuantMatMul` modules; softmax stays float32
as HF's eager path does. The projection Linears, MLP Linears and the patch-embedding Conv are swapped by
the generic registry.

Supported model classes: ``ViTModel``, ``ViTForImageClassification``, ``DeiTModel``,
``DeiTForImageClassification``, ``DeiTForImageClassificationWithTeacher``, ``Dinov2Model``,
``Dinov2ForImageClassification``. Masked-image-modelling models (their Conv decoder) and backbones are not.

HF models return a ``ModelOutput``; :func:`vitq.eval.metrics.logits_of` extracts the tensor the evaluation code needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.models.deit.modeling_deit import (
    DeiTAttention,
    DeiTEmbeddings,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTLayer,
    DeiTModel,
    DeiTPooler,
)
from transformers.models.dinov2.modeling_dinov2 import (
    Dinov2Attention,
    Dinov2Embeddings,
    Dinov2ForImageClassification,
    Dinov2Layer,
    Dinov2Model,
)
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTEmbeddings,
    ViTForImageClassification,
    ViTLayer,
    ViTModel,
    ViTPooler,
)

from vitq.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from vitq.models.base import ModelAdapter, clone_as, register_adapter
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import OpQuantSpec
from vitq.nn.registry import register_qmodule

HF_STANDARD_MEAN = (0.5, 0.5, 0.5)
HF_STANDARD_STD = (0.5, 0.5, 0.5)


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """HF eager masks are additive floats; SDPA-style masks are boolean (True = attend). Make it additive."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class QuantHFAttentionMixin(QuantAttentionMixin):
    """Quantized forward shared by the HF attention modules with ``q_proj``/``k_proj``/``v_proj``/``o_proj``.

    Reproduces the module's forward with HF's ``eager_attention_forward`` inlined:
    ``softmax(Q·K^T * scaling + bias, float32) · V``, dropout on the probabilities in training.
    Subclasses that add a bias to the scores (Swin's relative position bias) override :meth:`_scores_bias`.
    Returns ``(attn_output, attn_weights)`` like the float module, so HF's output recording
    (``output_attentions=True``) still works.
    """

    @classmethod
    def from_module(cls, module: nn.Module, spec: OpQuantSpec):
        q = clone_as(module, cls)
        q._add_matmuls(spec)
        return q

    def _scores_bias(self, attention_mask: torch.Tensor | None, input_shape: torch.Size,
                     dtype: torch.dtype) -> torch.Tensor | None:
        return _additive_mask(attention_mask, dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        bias = self._scores_bias(attention_mask, input_shape, query.dtype)

        attn_weights = self.matmul_scores(query, key.transpose(2, 3)) * self.scaling
        if bias is not None:
            attn_weights = attn_weights + bias
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
        attn_weights = nn.functional.dropout(attn_weights, p=self.attention_dropout if self.training else 0.0,
                                             training=self.training)
        attn_output = self.matmul_context(attn_weights, value).transpose(1, 2).contiguous()

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


@register_qmodule(ViTAttention)
class QuantViTAttention(QuantHFAttentionMixin, ViTAttention):
    pass


@register_qmodule(DeiTAttention)
class QuantDeiTAttention(QuantHFAttentionMixin, DeiTAttention):
    pass


@register_qmodule(Dinov2Attention)
class QuantDinov2Attention(QuantHFAttentionMixin, Dinov2Attention):
    pass


@dataclass(frozen=True)
class _Family:
    models: tuple[type[nn.Module], ...]
    embeddings: type[nn.Module]
    layer: type[nn.Module]
    pooler: type[nn.Module] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str


# Preprocessing follows the published checkpoints' preprocessor_config.json (not the processor class
# defaults, which for DeiT say 0.5/0.5 while every facebook/deit-* checkpoint uses ImageNet statistics):
# - ViT (google/vit-*): resize straight to 224x224, bilinear, mean/std 0.5 -> crop_pct 1.0.
# - DeiT (facebook/deit-*): resize to 256, centre-crop 224, bicubic, ImageNet mean/std -> crop_pct 224/256.
# - DINOv2 (facebook/dinov2-*, BitImageProcessor): shorter side 256, centre-crop 224, bicubic, ImageNet
#   mean/std -> crop_pct 224/256.
# DataConfig resizes the shorter side and centre-crops, so for non-square images ViT's "squash to HxW"
# resize is approximated by a shorter-side resize + centre crop.
_FAMILIES = (
    _Family((ViTModel, ViTForImageClassification), ViTEmbeddings, ViTLayer, ViTPooler,
            HF_STANDARD_MEAN, HF_STANDARD_STD, 1.0, "bilinear"),
    _Family((DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher), DeiTEmbeddings,
            DeiTLayer, DeiTPooler, IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
    _Family((Dinov2Model, Dinov2ForImageClassification), Dinov2Embeddings, Dinov2Layer, None,
            IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
)

#: classification heads of the supported models, by attribute of the top-level model
_HEAD_ATTRS = ("classifier", "cls_classifier", "distillation_classifier")


def _family_of(model: nn.Module) -> _Family | None:
    for fam in _FAMILIES:
        if isinstance(model, fam.models):
            return fam
    return None


def _image_size(config) -> tuple[int, int]:
    size = config.image_size
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def hf_data_config(config, mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float,
                   interpolation: str) -> DataConfig:
    """A :class:`DataConfig` from an HF vision config (``image_size``, ``num_channels``).

    For a channel count other than 3 the per-channel statistics are replaced by their average.
    """
    channels = int(getattr(config, "num_channels", 3))
    if channels != len(mean):
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    h, w = _image_size(config)
    return DataConfig(input_size=(channels, h, w), mean=tuple(mean), std=tuple(std), crop_pct=crop_pct,
                      interpolation=interpolation)


@register_adapter
class HFViTAdapter(ModelAdapter):
    name = "hf-vit"
    description = (
        "Hugging Face ViTModel/ViTForImageClassification, DeiTModel/DeiTForImageClassification"
        "(WithTeacher), Dinov2Model/Dinov2ForImageClassification"
    )

    def matches(self, model: nn.Module) -> bool:
        return _family_of(model) is not None

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        fam = _family_of(model)
        units = [(n, m) for n, m in model.named_modules() if isinstance(m, fam.embeddings)]
        units += [(n, m) for n, m in model.named_modules() if isinstance(m, fam.layer)]
        units += [(n, model.get_submodule(n)) for n in self.head_names(model)]
        return units

    def head_names(self, model: nn.Module) -> list[str]:
        fam = _family_of(model)
        names = []
        if fam is not None and fam.pooler is not None:
            # ViTModel/DeiTModel built with add_pooling_layer=True: pooler = tanh(dense(CLS))
            names += [f"{n}.dense" for n, m in model.named_modules()
                      if isinstance(m, fam.pooler) and isinstance(getattr(m, "dense", None), nn.Linear)]
        names += [n for n in _HEAD_ATTRS if isinstance(getattr(model, n, None), nn.Linear)]
        return names

    def data_config(self, model: nn.Module) -> DataConfig:
        fam = _family_of(model)
        return hf_data_config(model.config, fam.mean, fam.std, fam.crop_pct, fam.interpolation)

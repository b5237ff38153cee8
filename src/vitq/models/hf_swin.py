"""Adapter for Hugging Face Swin (``SwinModel``, ``SwinForImageClassification``).

In transformers 5.x ``SwinAttention`` holds ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and a
``SwinRelativePositionBias`` module; it adds the relative position bias and the shifted-window mask to
the scores and calls a pluggable attention function. The quantized subclass reuses the HF ViT attention
forward (:class:`~vitq.models.hf_vit.QuantHFAttentionMixin`) and only supplies that additive bias.
PatchMerging's ``reduction`` Linear and the patch-embedding Conv are quantized by the generic registry.
Swinv2 (``Swinv2Model``, other classes) is not matched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.models.swin.modeling_swin import (
    SwinAttention,
    SwinEmbeddings,
    SwinForImageClassification,
    SwinLayer,
    SwinModel,
    SwinPatchMerging,
)

from vitq.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from vitq.models.base import ModelAdapter, register_adapter
from vitq.models.hf_vit import QuantHFAttentionMixin, hf_data_config
from vitq.nn.registry import register_qmodule


@register_qmodule(SwinAttention)
class QuantSwinAttention(QuantHFAttentionMixin, SwinAttention):
    """HF ``SwinAttention`` (W-MSA / SW-MSA) with Q·K^T and attn·V as quantizable modules."""

    def _scores_bias(self, attention_mask: torch.Tensor | None, input_shape: torch.Size,
                     dtype: torch.dtype) -> torch.Tensor:
        # Same as SwinAttention.forward: relative position bias (1, heads, N, N) plus the cyclic-shift
        # mask (num_windows, N, N) broadcast over the batch.
        relative_position_bias = self.relative_position_bias()
        if attention_mask is None:
            return relative_position_bias
        num_windows = attention_mask.shape[0]
        batch_size = input_shape[0] // num_windows
        seq_len = input_shape[1]
        attention_mask = (
            attention_mask.unsqueeze(1).unsqueeze(0).expand(batch_size, -1, -1, -1, -1).reshape(-1, 1, seq_len, seq_len)
        )
        return relative_position_bias + attention_mask


@register_adapter
class HFSwinAdapter(ModelAdapter):
    name = "hf-swin"
    description = "Hugging Face SwinModel / SwinForImageClassification (Swin V1)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, (SwinModel, SwinForImageClassification))

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        # SwinStage registers its blocks before its downsample (PatchMerging at the *end* of stages
        # 0..n-2 in HF), which is also the order its forward runs them: module order is forward order.
        units = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, (SwinEmbeddings, SwinLayer, SwinPatchMerging))]
        units += [(n, model.get_submodule(n)) for n in self.head_names(model)]
        return units

    def head_names(self, model: nn.Module) -> list[str]:
        return ["classifier"] if isinstance(getattr(model, "classifier", None), nn.Linear) else []

    def data_config(self, model: nn.Module) -> DataConfig:
        # microsoft/swin-* checkpoints: resize straight to 224x224, bicubic, ImageNet mean/std.
        return hf_data_config(model.config, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bicubic")

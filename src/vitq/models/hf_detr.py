"""Adapter for Hugging Face DETR (``DetrForObjectDetection``, ``DetrModel``): the paper's Table 2 model.

What is quantized, as Liu et al. do for DETR: every Linear of the encoder and decoder (self-attention,
cross-attention, FFN), the input projection (the 1x1 Conv from the backbone to ``d_model``), and both
attention products (Q·K^T, attn·V) of every self- and cross-attention. The attention modules
(``DetrSelfAttention``, ``DetrCrossAttention``) become quantized subclasses that run HF's eager attention
inline with the two products as :class:`~vitq.nn.qops.QuantMatMul` modules (softmax stays float, in
the input dtype as HF's eager path does); Linears and Convs are swapped by the generic registry.

Kept float by default:
- the CNN backbone (``QuantConfig.quantize_backbone`` / ``--quantize-backbone`` quantizes its Convs,
  calibrated as one unit before the input projection);
- the class and box heads (``quantize_head``, as a classifier's head);
- the learned object queries (an ``nn.Embedding`` read as a table) and the sine position embeddings
  (computed, no weights). They are added to the hidden states before the q/k projections, whose
  quantized inputs therefore include them.

Calibration units, in forward order: backbone, input projection, encoder layers, decoder layers, heads.
Each decoder layer is calibrated on the output of the already quantized encoder (its cross-attention's
keys and values), so encoder errors are seen where they accumulate.

Padding masks: DETR batches images of different sizes by zero-padding and a pixel mask. vitq's
calibration and evaluation pass one tensor per batch, so a batch may carry the mask as one extra
channel (:func:`pack_pixel_mask`, 1 = real pixel); :meth:`HFDetrAdapter.forward` splits it off and hands
it to the model as ``pixel_mask``. A batch with the model's own channel count has no padding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.models.detr.modeling_detr import (
    DetrCrossAttention,
    DetrForObjectDetection,
    DetrModel,
    DetrSelfAttention,
)

from vitq.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from vitq.errors import CalibrationDataError
from vitq.models.base import ModelAdapter, register_adapter
from vitq.models.hf_vit import QuantHFAttentionMixin, _additive_mask
from vitq.nn.registry import register_qmodule

#: the preprocessing of the published facebook/detr-* checkpoints (shortest edge 800, longest at most 1333)
DETR_SHORTEST_EDGE = 800
DETR_LONGEST_EDGE = 1333


def pack_pixel_mask(images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images and their ``(N, H, W)`` pixel mask (1 = real, 0 = padding) as one
    ``(N, C + 1, H, W)`` tensor, the form :meth:`HFDetrAdapter.forward` unpacks."""
    if pixel_mask.shape != (images.shape[0], *images.shape[2:]):
        raise CalibrationDataError(f"pixel mask of shape {tuple(pixel_mask.shape)} does not match images "
                                   f"{tuple(images.shape)} (expected {(images.shape[0], *images.shape[2:])})")
    return torch.cat([images, pixel_mask.to(images.dtype)[:, None]], dim=1)


def _attend(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's ``eager_attention_forward`` with the two products as the module's QuantMatMuls."""
    attn_weights = module.matmul_scores(query, key.transpose(2, 3)) * module.scaling
    mask = _additive_mask(attention_mask, attn_weights.dtype)
    if mask is not None:
        attn_weights = attn_weights + mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    attn_weights = nn.functional.dropout(attn_weights, p=module.attention_dropout if module.training else 0.0,
                                         training=module.training)
    return module.matmul_context(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


@register_qmodule(DetrSelfAttention)
class QuantDetrSelfAttention(QuantHFAttentionMixin, DetrSelfAttention):
    """DETR self-attention: position embeddings added to queries and keys, not values."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        qk_input = hidden_states + position_embeddings if position_embeddings is not None else hidden_states
        query = self.q_proj(qk_input).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(qk_input).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        out, weights = _attend(self, query, key, value, attention_mask)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


@register_qmodule(DetrCrossAttention)
class QuantDetrCrossAttention(QuantHFAttentionMixin, DetrCrossAttention):
    """DETR cross-attention: queries from the decoder (+ query position embeddings), keys and values from
    the encoder output (keys + its spatial position embeddings)."""

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None, position_embeddings: torch.Tensor | None = None,
                encoder_position_embeddings: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        q_shape = hidden_states.shape[:-1]
        kv_shape = key_value_states.shape[:-1]
        q_input = hidden_states + position_embeddings if position_embeddings is not None else hidden_states
        k_input = (key_value_states + encoder_position_embeddings if encoder_position_embeddings is not None
                   else key_value_states)
        query = self.q_proj(q_input).view(*q_shape, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(k_input).view(*kv_shape, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(key_value_states).view(*kv_shape, -1, self.head_dim).transpose(1, 2)
        out, weights = _attend(self, query, key, value, attention_mask)
        return self.o_proj(out.reshape(*q_shape, -1).contiguous()), weights


def _detr_prefix(model: nn.Module) -> tuple[DetrModel, str]:
    if isinstance(model, DetrForObjectDetection):
        return model.model, "model."
    return model, ""


@register_adapter
class HFDetrAdapter(ModelAdapter):
    name = "hf-detr"
    description = ("Hugging Face DetrForObjectDetection/DetrModel (encoder and decoder Linears, input projection, "
                   "self- and cross-attention products; CNN backbone float unless quantize_backbone)")

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, (DetrForObjectDetection, DetrModel))

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        detr, p = _detr_prefix(model)
        units = [(f"{p}backbone", detr.backbone), (f"{p}input_projection", detr.input_projection)]
        units += [(f"{p}encoder.layers.{i}", m) for i, m in enumerate(detr.encoder.layers)]
        units += [(f"{p}decoder.layers.{i}", m) for i, m in enumerate(detr.decoder.layers)]
        units += [(n, model.get_submodule(n)) for n in self.head_names(model)]
        return units

    def head_names(self, model: nn.Module) -> list[str]:
        return ["class_labels_classifier", "bbox_predictor"] if isinstance(model, DetrForObjectDetection) else []

    def backbone_names(self, model: nn.Module) -> list[str]:
        return [f"{_detr_prefix(model)[1]}backbone"]

    def data_config(self, model: nn.Module) -> DataConfig:
        c = int(getattr(model.config, "num_channels", 3))
        mean = IMAGENET_MEAN if c == 3 else (sum(IMAGENET_MEAN) / 3,) * c
        std = IMAGENET_STD if c == 3 else (sum(IMAGENET_STD) / 3,) * c
        return DataConfig(input_size=(c, DETR_SHORTEST_EDGE, DETR_SHORTEST_EDGE), mean=mean, std=std, crop_pct=1.0,
                          interpolation="bilinear",
                          extra={"task": "detection", "shortest_edge": DETR_SHORTEST_EDGE,
                                 "longest_edge": DETR_LONGEST_EDGE})

    def forward(self, model: nn.Module, images: torch.Tensor):
        """Run a batch; ``images`` may carry the pixel mask as a last extra channel (:func:`pack_pixel_mask`)."""
        c = int(getattr(model.config, "num_channels", 3))
        if images.shape[1] == c:
            return model(pixel_values=images)
        if images.shape[1] == c + 1:
            return model(pixel_values=images[:, :c].contiguous(), pixel_mask=(images[:, c] > 0.5).long())
        raise CalibrationDataError(f"DETR expects {c}-channel images (or {c + 1} with a pixel-mask channel); "
                                   f"got a batch of shape {tuple(images.shape)}")

"""Adapter for timm's VisionTransformer family: ViT, DeiT (incl. distilled), DINOv2-style (LayerScale,
register tokens). The attention core is made explicit by swapping ``timm.layers.Attention`` for a
subclass whose forward uses two :class:`~vitq.nn.qops.QuantMatMul` modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.vision_transformer import VisionTransformer

from vitq.data.transforms import DataConfig
from vitq.models.base import ModelAdapter, clone_as, register_adapter
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import OpQuantSpec
from vitq.nn.registry import register_qmodule


@register_qmodule(Attention)
class QuantTimmAttention(Attention, QuantAttentionMixin):
    """timm ``Attention`` with Q·K^T and attn·V as quantizable modules (the non-fused path of timm)."""

    @classmethod
    def from_module(cls, module: Attention, spec: OpQuantSpec) -> QuantTimmAttention:
        q = clone_as(module, cls)
        q._add_matmuls(spec)
        return q

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.matmul_scores(q, k.transpose(-2, -1)) * self.scale
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.matmul_context(attn, v)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def _timm_data_config(model: nn.Module) -> DataConfig:
    from timm.data import resolve_data_config

    d = resolve_data_config({}, model=model)
    input_size = tuple(d["input_size"])
    pe = getattr(model, "patch_embed", None)
    # The pretrained config states the default resolution; a model built with another img_size or
    # in_chans expects that instead.
    if pe is not None and getattr(pe, "img_size", None) is not None and hasattr(pe, "proj"):
        input_size = (pe.proj.in_channels, *tuple(pe.img_size))
    return DataConfig(
        input_size=input_size,
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        crop_pct=float(d.get("crop_pct", 0.875)),
        interpolation=str(d.get("interpolation", "bicubic")),
    )


@register_adapter
class TimmViTAdapter(ModelAdapter):
    name = "timm-vit"
    description = "timm VisionTransformer: ViT, DeiT, DeiT-distilled, DINOv2 (LayerScale, register tokens)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        units = [("patch_embed", model.patch_embed)]
        units += [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        units += [(n, getattr(model, n)) for n in self.head_names(model)]
        return units

    def head_names(self, model: nn.Module) -> list[str]:
        # DeiT-distilled adds head_dist; both read the final norm's tokens.
        return [n for n in ("head", "head_dist") if isinstance(getattr(model, n, None), nn.Linear)]

    def data_config(self, model: nn.Module) -> DataConfig:
        return _timm_data_config(model)

"""Adapter for timm's SwinTransformer (Swin V1: swin_tiny/small/base/large, any window size).

The window attention core is made explicit by swapping ``timm.models.swin_transformer.WindowAttention``
for a subclass whose forward is timm's non-fused path with Q·K^T and attn·V as two
:class:`~vitq.nn.qops.QuantMatMul` modules; the relative position bias and the shifted-window mask are
added to the scores in float, and softmax stays float. PatchMerging's ``reduction`` Linear and the
patch-embedding Conv are quantized by the generic registry.

SwinV2 (``SwinTransformerV2``, ``SwinTransformerV2Cr``) is a different class tree (scaled cosine
attention, log-spaced continuous position bias) and is not matched by this adapter.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.swin_transformer import PatchMerging, SwinTransformer, WindowAttention

from vitq.data.transforms import DataConfig
from vitq.models.base import ModelAdapter, clone_as, register_adapter
from vitq.models.timm_vit import _timm_data_config
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import OpQuantSpec
from vitq.nn.registry import register_qmodule


@register_qmodule(WindowAttention)
class QuantTimmWindowAttention(WindowAttention, QuantAttentionMixin):
    """timm Swin ``WindowAttention`` (W-MSA / SW-MSA) with Q·K^T and attn·V as quantizable modules.

    Follows timm's non-fused path operation for operation (``q * scale`` before Q·K^T, bias and mask
    added to the scores), so with quantization disabled it matches the float module bit for bit when
    timm itself runs non-fused (its default for Swin), and to float rounding when timm runs SDPA.
    """

    @classmethod
    def from_module(cls, module: WindowAttention, spec: OpQuantSpec) -> QuantTimmWindowAttention:
        q = clone_as(module, cls)
        q._add_matmuls(spec)
        return q

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = self.matmul_scores(q, k.transpose(-2, -1))
        attn = attn + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        attn = self.attn_drop(attn)
        x = self.matmul_context(attn, v)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


@register_adapter
class TimmSwinAdapter(ModelAdapter):
    name = "timm-swin"
    description = "timm SwinTransformer (Swin V1; SwinV2 is not supported)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        # timm 1.x puts PatchMerging at the *start* of stages 1.. (stage 0 has an Identity); the
        # order below follows SwinTransformerStage.forward: downsample, then the blocks.
        units: list[tuple[str, nn.Module]] = [("patch_embed", model.patch_embed)]
        for i, stage in enumerate(model.layers):
            if isinstance(stage.downsample, PatchMerging):
                units.append((f"layers.{i}.downsample", stage.downsample))
            units += [(f"layers.{i}.blocks.{j}", b) for j, b in enumerate(stage.blocks)]
        units += [(n, model.get_submodule(n)) for n in self.head_names(model)]
        return units

    def head_names(self, model: nn.Module) -> list[str]:
        # ClassifierHead(global pool -> dropout -> fc -> flatten); fc is Identity when num_classes=0.
        fc = getattr(getattr(model, "head", None), "fc", None)
        return ["head.fc"] if isinstance(fc, nn.Linear) else []

    def data_config(self, model: nn.Module) -> DataConfig:
        return _timm_data_config(model)

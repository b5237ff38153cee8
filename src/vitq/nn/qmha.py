"""Quantized ``torch.nn.MultiheadAttention``: its projections and its two attention products as vitq ops.

torch's module computes everything inside one opaque ``F.multi_head_attention_forward`` call (packed
``in_proj_weight``, ``out_proj``, Q·K^T and attn·V), which the functional capture of :mod:`vitq.nn.capture`
cannot split. It is swapped through the registry like a Linear (exact class ``nn.MultiheadAttention``,
wherever a model uses it: SigLIP's MAP head, torchvision's ViT, a user's block) for
:class:`QuantMultiheadAttention`, a subclass built from the float module with
:func:`~vitq.nn.registry.clone_as` whose forward writes the attention out with

- ``in_proj``: one :class:`~vitq.nn.qops.QuantLinear` holding the packed ``(3E, E)`` weight and bias (the
  float module's own parameters). Self-attention (``query is key is value``) projects once and splits the
  output in q | k | v; cross-attention projects the sequence-concatenation of the distinct inputs once and
  keeps each input's slice (one call: one input interval, one calibration capture). With ``kdim`` /
  ``vdim`` != ``embed_dim`` (separate weights) it is ``q_proj``, ``k_proj``, ``v_proj``, three QuantLinears.
  These are the in-projection(s) the census counts (:mod:`vitq.models.census`), so coverage stays exact;
- ``matmul_scores`` (Q·K^T, role ``attn_scores``) and ``matmul_context`` (attn·V, ``attn_context``),
  :class:`~vitq.nn.qops.QuantMatMul` on ``(batch, heads, tokens, head_dim)`` operands, softmax in float;
- ``out_proj``: a QuantLinear sharing the float ``out_proj``'s parameters;

and otherwise the float module's semantics: ``batch_first`` or not, unbatched inputs, ``bias_k`` / ``bias_v``
(``add_bias_kv``), ``add_zero_attn``, boolean (True = masked) and additive ``attn_mask`` (2-D or
``(batch * heads, L, S)``) and ``key_padding_mask``, the ``is_causal`` hint as torch reads it, attention
dropout in train mode only, and ``need_weights`` / ``average_attn_weights`` return values. The moved
parameters stay readable under their torch names (``in_proj_weight``, ``in_proj_bias``, ``q_proj_weight``, ...)
as properties; the state dict holds each tensor once, under the QuantLinear that owns it. Inside an
``nn.TransformerEncoderLayer``, the layer's fused inference kernel (which would bypass every quantized op of
the layer) is kept off (:func:`_no_fused_layer`). Nested-tensor inputs (``nn.TransformerEncoder``'s
padding-mask fast path) are refused with an error.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.errors import VitqError
from vitq.nn.capture import sdpa_decomposed
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import OpQuantSpec, QuantLinear
from vitq.nn.registry import clone_as, register_qmodule

_SEPARATE = ("q_proj", "k_proj", "v_proj")


def _quant_linear(weight: nn.Parameter, bias: nn.Parameter | None, spec: OpQuantSpec) -> QuantLinear:
    """A QuantLinear whose weight and bias are the given parameters (shared, not copied)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = weight
    if bias is not None:
        lin.bias = bias
    return QuantLinear.from_module(lin, spec)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype, what: str) -> torch.Tensor | None:
    """torch's mask convention: boolean True = not attended (-inf), a float mask is added as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"nn.MultiheadAttention: only bool and floating types of {what} are supported, got {mask.dtype}")
    return mask


def _no_fused_layer(_module: nn.Module, _args: tuple) -> None:
    """A forward pre-hook that does nothing. ``nn.TransformerEncoderLayer`` in eval under ``no_grad`` runs a
    fused kernel (``torch._transformer_encoder_layer_fwd``) on ``self_attn.in_proj_weight`` and its Linears'
    weights, never calling them, so every quantized op of the layer would be skipped; torch does not take
    that path when a submodule of the layer has a hook, and this is that hook."""


@register_qmodule(nn.MultiheadAttention)
class QuantMultiheadAttention(QuantAttentionMixin, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with quantized in-/out-projections and attention products (module docstring)."""

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, spec: OpQuantSpec) -> QuantMultiheadAttention:
        q = clone_as(module, cls)
        params = q._parameters
        weight, bias = params.pop("in_proj_weight", None), params.pop("in_proj_bias", None)
        separate = [params.pop(f"{n}_weight", None) for n in _SEPARATE]
        del q._modules["out_proj"]  # re-added after the in-projection(s): modules in call order
        if module._qkv_same_embed_dim:
            q.in_proj = _quant_linear(weight, bias, spec)
        else:
            biases = [None] * 3 if bias is None else [nn.Parameter(b.detach().clone(), requires_grad=bias.requires_grad)
                                                      for b in bias.chunk(3)]
            for name, w, b in zip(_SEPARATE, separate, biases):
                setattr(q, name, _quant_linear(w, b, spec))
        q.out_proj = QuantLinear.from_module(module.out_proj, spec)
        q._add_matmuls(spec)
        device = module.out_proj.weight.device
        q.matmul_scores.to(device)
        q.matmul_context.to(device)
        q.register_forward_pre_hook(_no_fused_layer)
        return q

    # the float module's parameter names, read-only views of the quantized Linears' parameters
    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        return self.in_proj.weight if self._qkv_same_embed_dim else None

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        if self._qkv_same_embed_dim:
            return self.in_proj.bias
        biases = [getattr(self, n).bias for n in _SEPARATE]
        return None if biases[0] is None else torch.cat(biases)

    @property
    def q_proj_weight(self) -> torch.Tensor | None:
        return None if self._qkv_same_embed_dim else self.q_proj.weight

    @property
    def k_proj_weight(self) -> torch.Tensor | None:
        return None if self._qkv_same_embed_dim else self.k_proj.weight

    @property
    def v_proj_weight(self) -> torch.Tensor | None:
        return None if self._qkv_same_embed_dim else self.v_proj.weight

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 seq_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v in the inputs' own layout (module docstring: one in_proj call, or three Linears)."""
        if not self._qkv_same_embed_dim:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        e = self.embed_dim
        if query is key and key is value:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
            return q, k, v
        inputs = [query, key] if key is value else [query, key, value]
        outs = self.in_proj(torch.cat(inputs, dim=seq_dim)).split([t.size(seq_dim) for t in inputs], dim=seq_dim)
        kv = outs[1]
        return outs[0][..., :e], kv[..., e:2 * e], outs[-1][..., 2 * e:]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query.is_nested or key.is_nested or value.is_nested:
            raise VitqError(f"{type(self).__name__}: nested-tensor inputs are not supported by vitq's quantized "
                            "nn.MultiheadAttention; pass padded tensors with a key_padding_mask")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (nn.MultiheadAttention)")
        batched = query.dim() == 3
        q, k, v = self._project(query, key, value, 1 if batched and self.batch_first else 0)
        if not batched:
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        bsz, tgt_len, heads, head_dim = q.size(0), q.size(1), self.num_heads, self.head_dim
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(bsz, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(bsz, 1, -1)], dim=1)
        # (batch, heads, tokens, head_dim)
        q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz, heads, 1, head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(bsz, heads, 1, head_dim)], dim=2)
        src_len = k.size(2)
        mask = self._mask(attn_mask, key_padding_mask, is_causal and key_padding_mask is None and not need_weights,
                          q.dtype, bsz, tgt_len, src_len)
        maps: list[torch.Tensor] = []  # the attention weights as attn·V sees them (after dropout), returned

        def context(attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            maps.append(attn)
            return self.matmul_context(attn, v)

        out = sdpa_decomposed(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0,
                              scores=self.matmul_scores, context=context)
        out = self.out_proj(out.transpose(1, 2).flatten(2))  # (batch, tgt_len, embed_dim)
        attn = maps[0]
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.mean(dim=1) if average_attn_weights else attn
        return out, (weights if batched else weights.squeeze(0))

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, causal: bool,
              dtype: torch.dtype, bsz: int, tgt_len: int, src_len: int) -> torch.Tensor | None:
        """The additive mask ``(batch | 1, heads | 1, tgt_len, src_len)``: ``attn_mask`` plus ``key_padding_mask``,
        padded with 0 for ``bias_k`` / the zero attention; with torch's causal hint (no padding mask, no
        weights returned) the causal mask itself, as torch computes it then."""
        if causal:
            keep = torch.ones(tgt_len, src_len, dtype=torch.bool, device=attn_mask.device).tril()
            return _additive(~keep, dtype, "attn_mask")
        attn_mask = _additive(attn_mask, dtype, "attn_mask")
        key_padding_mask = _additive(key_padding_mask, dtype, "key_padding_mask")
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                attn_mask = attn_mask[None, None]
            elif attn_mask.dim() == 3:
                attn_mask = attn_mask.view(bsz, self.num_heads, tgt_len, -1)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
            mask = F.pad(attn_mask, (0, extra)) if extra else attn_mask
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(bsz, 1, 1, -1)
            kpm = F.pad(kpm, (0, extra)) if extra else kpm
            mask = kpm if mask is None else mask + kpm
        if mask is not None and mask.size(-1) != src_len:
            raise RuntimeError(f"{type(self).__name__}: mask covers {mask.size(-1)} keys, the keys are {src_len}")
        return mask

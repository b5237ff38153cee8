"""LayerNorm folding for a pre-LN timm ViT: every LayerNorm becomes an affine-free RMSNorm, exactly.

The residual stream of a pre-LN ViT is written by the patch embedding (its Conv), the class / register /
distillation tokens and the position embedding, and by every block's attention output projection and
MLP second Linear (after their LayerScale); it is read only by LayerNorms (each block's ``norm1`` and
``norm2``, and the final ``norm`` or ``fc_norm`` before the head). :func:`fold_layernorms` makes three
function-preserving changes (the recipe of SliceGPT, Ashkboos et al. 2024, Sec. 3.1, for a ViT):

1. LayerScale into its writer: ``ls(W a + b) = diag(g) W a + g * b``; ``ls1``/``ls2`` become Identity.
2. Centring: every writer subtracts its own per-token channel mean (``W <- W - mean over output
   channels``, ``b <- b - mean(b)``; the tokens and position embedding ``t <- t - mean_c(t)``). The stream
   is then zero-mean per token. Every reader is a LayerNorm, which removes that mean anyway, so nothing
   downstream changes (pooling by class token or by average keeps the pooled vector zero-mean).
3. For a zero-mean x, ``LayerNorm(x) = RMSNorm(x) * gamma + beta`` exactly (eps included): gamma and beta
   go into the Linears each LayerNorm feeds (``W <- W diag(gamma)``, ``b <- b + W beta``; a Linear without
   a bias gets one where beta is folded in), and the LayerNorm becomes :class:`vitq.nn.rmsnorm.RMSNorm`
   (no parameters, the LayerNorm's eps).

Every fold is computed in float64 and stored back in the parameter's dtype. The stream is then invariant
to an orthogonal change of basis, which :mod:`vitq.transforms.rotation` applies.

What is supported is checked up front by :func:`residual_stream`, which raises
:class:`~vitq.errors.UnsupportedModelError` naming the caller (the recipe) and the module that cannot be
folded: only timm ``VisionTransformer`` (and subclasses such as DeiT-distilled) with timm's pre-LN
``Block``, ``Attention`` and ``Mlp``, a ``PatchEmbed`` without norm, no ``norm_pre`` (CLIP), no attention
pooling, ``token``/``avg``/no pooling (max pooling does not commute with the change of basis), a final
LayerNorm and Linear head(s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from vitq.errors import UnsupportedModelError
from vitq.nn.rmsnorm import RMSNorm

#: pooling modes of timm's VisionTransformer that commute with centring and rotating every token
SUPPORTED_POOLS = ("token", "avg", "")


@dataclass
class BlockIO:
    """One pre-LN block: its two LayerNorms, what they feed, and the two writers (with their LayerScale)."""

    name: str
    block: nn.Module
    qkv_readers: list[str]  # attribute paths under the block: "attn.qkv" (+ "attn.gate")
    fc1: str
    proj_ls: str  # "ls1"
    fc2_ls: str  # "ls2"


@dataclass
class ResidualStream:
    """Who writes into and who reads from the residual stream of a supported timm ViT."""

    model: nn.Module
    dim: int
    blocks: list[BlockIO]
    tokens: list[str]  # model parameters of shape (..., dim): cls/reg/dist tokens, pos_embed
    final_norm: str  # "norm" or "fc_norm"
    heads: list[str]  # "head" (+ "head_dist")
    notes: list[str] = field(default_factory=list)

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)


def _unsupported(who: str, where: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{who}: cannot fold the LayerNorms of this model: {where} {what}")


def residual_stream(model: nn.Module, who: str = "LayerNorm folding") -> ResidualStream:
    """The writers and readers of ``model``'s residual stream; :class:`UnsupportedModelError` naming ``who``
    (e.g. ``"recipe 'rtn-rot' (rotation 'hadamard')"``) and the offending module when it is not a
    supported pre-LN timm ViT (see the module docstring)."""
    cls = f"{type(model).__module__}.{type(model).__name__}"
    try:
        from timm.layers import Attention, LayerScale, Mlp, PatchEmbed
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:  # timm not installed: no supported model
        raise _unsupported(who, f"the model ({cls})", "is not a timm VisionTransformer (timm is not installed)") from None
    if not isinstance(model, VisionTransformer):
        raise _unsupported(who, f"the model ({cls})", "is not a timm VisionTransformer; LayerNorm folding and "
                           "rotation support timm's pre-LN VisionTransformer family only")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or type(pe.proj) is not nn.Conv2d or not isinstance(pe.norm, nn.Identity):
        raise _unsupported(who, f"patch_embed ({type(pe).__name__})", "is not a timm PatchEmbed with a Conv2d "
                           "projection and no norm")
    if not isinstance(model.norm_pre, nn.Identity):
        raise _unsupported(who, "norm_pre", "is a LayerNorm on the residual stream itself (pre_norm=True, "
                           "CLIP-style); its output cannot be made mean-free")
    if getattr(model, "attn_pool", None) is not None:
        raise _unsupported(who, "attn_pool", "(attention pooling) reads the residual stream with its own "
                           "LayerNorm and attention")
    if model.global_pool not in SUPPORTED_POOLS:
        raise _unsupported(who, f"global_pool={model.global_pool!r}", "does not commute with centring and "
                           f"rotating the tokens; supported: {', '.join(map(repr, SUPPORTED_POOLS))}")
    dim = model.embed_dim
    norms = [n for n in ("norm", "fc_norm") if not isinstance(getattr(model, n), nn.Identity)]
    if len(norms) != 1 or not isinstance(getattr(model, norms[0]), nn.LayerNorm):
        raise _unsupported(who, "norm / fc_norm", f"must be exactly one LayerNorm before the head (found "
                           f"{[type(getattr(model, n)).__name__ for n in ('norm', 'fc_norm')]})")
    heads = [h for h in ("head", "head_dist") if hasattr(model, h)]
    for h in heads:
        if type(getattr(model, h)) is not nn.Linear:
            raise _unsupported(who, f"{h} ({type(getattr(model, h)).__name__})", "is not a Linear: the final "
                               "LayerNorm's gamma/beta and the rotation must be folded into a Linear head "
                               "(a model built with num_classes=0 returns the normalised features themselves)")
    tokens = [t for t in ("cls_token", "reg_token", "dist_token", "pos_embed")
              if isinstance(getattr(model, t, None), torch.Tensor)]
    for t in tokens:
        if getattr(model, t).shape[-1] != dim:
            raise _unsupported(who, t, f"has last dimension {getattr(model, t).shape[-1]}, not embed_dim={dim}")
    blocks = []
    for i, b in enumerate(model.blocks):
        name = f"blocks.{i}"
        if type(b) is not Block:
            raise _unsupported(who, f"{name} ({type(b).__name__})", "is not timm's pre-LN Block (post-LN, "
                               "parallel and other block types are not supported)")
        for n in ("norm1", "norm2"):
            ln = getattr(b, n)
            if not isinstance(ln, nn.LayerNorm) or tuple(ln.normalized_shape) != (dim,) or ln.weight is None:
                raise _unsupported(who, f"{name}.{n} ({type(ln).__name__})", f"is not a LayerNorm over {dim} "
                                   "channels with affine parameters")
        if not isinstance(b.attn, Attention) or type(b.attn.qkv) is not nn.Linear or type(b.attn.proj) is not nn.Linear:
            raise _unsupported(who, f"{name}.attn ({type(b.attn).__name__})", "is not timm's Attention with "
                               "Linear qkv and proj")
        if type(b.mlp) is not Mlp or type(b.mlp.fc1) is not nn.Linear or type(b.mlp.fc2) is not nn.Linear:
            raise _unsupported(who, f"{name}.mlp ({type(b.mlp).__name__})", "is not timm's Mlp with Linear "
                               "fc1 and fc2")
        for ls in ("ls1", "ls2"):
            m = getattr(b, ls)
            if not (isinstance(m, nn.Identity) or type(m) is LayerScale):
                raise _unsupported(who, f"{name}.{ls} ({type(m).__name__})", "is neither Identity nor LayerScale")
        readers = ["attn.qkv"] + (["attn.gate"] if getattr(b.attn, "gate", None) is not None else [])
        blocks.append(BlockIO(name, b, readers, "mlp.fc1", "ls1", "ls2"))
    return ResidualStream(model, dim, blocks, tokens, norms[0], heads)


# -- the folds ---------------------------------------------------------------------------------------------
def _set(p: torch.Tensor, value: torch.Tensor) -> None:
    p.data.copy_(value.to(p.dtype))


@torch.no_grad()
def fold_layer_scale(linear: nn.Linear, gamma: torch.Tensor) -> None:
    """``diag(gamma) (W a + b)``: scale the Linear's output rows by ``gamma``."""
    g = gamma.detach().double()
    _set(linear.weight, linear.weight.double() * g[:, None])
    if linear.bias is not None:
        _set(linear.bias, linear.bias.double() * g)


@torch.no_grad()
def center_linear_output(layer: nn.Linear | nn.Conv2d) -> None:
    """Subtract the output's per-token channel mean inside a Linear or convolution (SliceGPT's
    ``bake_mean_into_linear``): the mean over output channels, dim 0 of the weight."""
    w = layer.weight.double()
    _set(layer.weight, w - w.mean(dim=0, keepdim=True))
    if layer.bias is not None:
        b = layer.bias.double()
        _set(layer.bias, b - b.mean())


@torch.no_grad()
def center_last_dim(t: torch.Tensor) -> None:
    v = t.double()
    _set(t, v - v.mean(dim=-1, keepdim=True))


@torch.no_grad()
def fold_norm_affine(norm: nn.LayerNorm, linears: list[nn.Linear]) -> None:
    """``(r * gamma + beta) W^T + c = r (W diag(gamma))^T + (c + W beta)`` into every Linear of ``linears``."""
    g = norm.weight.double()
    beta = norm.bias.double() if norm.bias is not None else None
    for lin in linears:
        w = lin.weight.double()
        if beta is not None:
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                    device=lin.weight.device))
            _set(lin.bias, lin.bias.double() + w @ beta)
        _set(lin.weight, w * g[None, :])


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


@dataclass
class FoldRecord:
    """What :func:`fold_layernorms` did (for logs and reports)."""

    layer_scales: int = 0
    writers_centred: int = 0
    norms_replaced: int = 0
    linears_folded: int = 0


@torch.no_grad()
def fold_layernorms(stream: ResidualStream) -> FoldRecord:
    """Steps 1-3 of the module docstring, in place on ``stream.model``."""
    model, rec = stream.model, FoldRecord()
    center_linear_output(model.patch_embed.proj)
    for t in stream.tokens:
        center_last_dim(getattr(model, t))
    rec.writers_centred += 1 + len(stream.tokens)
    for b in stream.blocks:
        for writer, ls in (("attn.proj", b.proj_ls), ("mlp.fc2", b.fc2_ls)):
            lin, scale = b.block.get_submodule(writer), getattr(b.block, ls)
            if not isinstance(scale, nn.Identity):
                fold_layer_scale(lin, scale.gamma)
                setattr(b.block, ls, nn.Identity())
                rec.layer_scales += 1
            center_linear_output(lin)
            rec.writers_centred += 1
        for norm, readers in (("norm1", b.qkv_readers), ("norm2", [b.fc1])):
            ln = getattr(b.block, norm)
            fold_norm_affine(ln, [b.block.get_submodule(r) for r in readers])
            setattr(b.block, norm, RMSNorm(stream.dim, ln.eps))
            rec.norms_replaced += 1
            rec.linears_folded += len(readers)
    ln = getattr(model, stream.final_norm)
    fold_norm_affine(ln, [getattr(model, h) for h in stream.heads])
    _replace(model, stream.final_norm, RMSNorm(stream.dim, ln.eps))
    rec.norms_replaced += 1
    rec.linears_folded += len(stream.heads)
    return rec

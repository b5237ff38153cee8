"""Orthogonal rotation of a ViT's residual stream (QuaRot-style), applied to the float model before its
modules are swapped for quantized ones (the ``rotate`` stage, :class:`vitq.lifecycle.stages.Rotate`).

Why: DINOv2's residual stream has a few channels hundreds of times larger than the rest; one
per-tensor activation interval at 4 bits then spends its levels on them. An orthogonal change of basis
``x -> x Q`` spreads every outlier over all channels (a randomized Hadamard Q gives each channel of
``x Q`` the same share of ``||x||``) while the float function stays exactly the same.

What :func:`rotate_model` does to a supported timm ViT (checked by
:func:`vitq.transforms.ln_folding.residual_stream`), in place, all in float64 and stored back in float32:

1. LayerNorm folding (:mod:`vitq.transforms.ln_folding`): LayerScale into its writer, every writer
   centred, gamma/beta into the Linears after each LayerNorm, every LayerNorm an affine-free RMSNorm.
   RMSNorm commutes with an orthogonal Q (``RMSNorm(x Q) = RMSNorm(x) Q``), LayerNorm does not.
2. Residual rotation by ``Q = diag(s) H / sqrt(d)`` (random signs ``s`` from ``seed``, ``H`` a Hadamard
   matrix of order d, :mod:`vitq.nn.hadamard`; DINOv2-S: d = 384 = 12 * 32, ``H_12 (x) H_32``; a d with
   no construction gets a random orthogonal Q, the QR factor of a seeded Gaussian matrix). Writers
   rotate their output: the patch-embedding Conv, the class/register/distillation tokens and the position
   embedding (``t <- t Q``), each ``attn.proj`` and ``mlp.fc2`` (``W <- Q^T W``, ``b <- Q^T b``). Readers
   rotate their input: ``attn.qkv`` (and ``attn.gate``), ``mlp.fc1`` and the head(s) (``W <- W Q``).
3. Per-head rotations, folded offline (exact because attention mixes tokens, never channels): a
   normalised Hadamard R of order head_dim on each head's V rows of ``qkv`` (``W_v <- R^T W_v``) and on
   the matching input columns of ``attn.proj`` (``W <- W blockdiag(R)``); the same R on each head's Q and
   K rows (``(q R)(k R)^T = q k^T``), which spreads the outliers of both operands of Q·K^T.
4. ``"hadamard-online"`` only: an :class:`~vitq.nn.hadamard.OnlineHadamard` module in front of every
   ``mlp.fc2`` (``x -> x M``, M a normalised Hadamard of the MLP width, run at inference as two small
   MatMuls with constants; it exports to ONNX as such) and ``W_fc2 <- W_fc2 M``. It spreads the
   post-GELU outliers of fc2's input, which no offline rotation can reach (GELU does not commute with
   a rotation). Each ``mlp`` becomes a :class:`HadamardMlp` (timm's ``Mlp`` with that one extra step).

The model's logits are checked before and after on two seeded random images
(:class:`~vitq.errors.VitqError` if they moved by more than ``tol`` of their largest magnitude). The
result depends only on the architecture, the float weights and ``seed``, so a saved model reloads by
rebuilding the float model and running this again (:func:`vitq.export.load_quantized` re-applies
``vitq.quantize`` with the saved config, which includes this stage), before its tensors are loaded.

Departures from QuaRot (spcl/QuaRot ``fake_quant/rotation_utils.py``, ``hadamard_utils.py``) and SliceGPT
(microsoft/TransformerCompression ``slicegpt/layernorm_fusion.py``, ``rotate.py``):

- ViT writers: the patch-embedding Conv (centred and rotated over its output channels), the class,
  register and distillation tokens and the position embedding, where the LLM code has token (and
  position) embedding tables; LayerScale is folded into ``proj``/``fc2`` first (LLMs have none).
- The RMSNorm keeps each LayerNorm's own eps (1e-6 for DINOv2), where both repositories' ``RMSN`` use a
  fixed 1e-5: with a fixed eps the function is only approximately preserved.
- Centring covers every writer including the embeddings, as SliceGPT does for OPT; QuaRot's LLaMA path
  needs none (LLaMA already has RMSNorm).
- Hadamard orders from Paley's construction (m - 1 a prime = 3 mod 4) times a power of two instead of
  QuaRot's stored tables; orders it cannot build fall back to a seeded random orthogonal matrix
  (QuaRot's ``random`` mode) instead of failing.
- V/out-projection: the per-head Hadamard is folded on both sides offline; QuaRot folds per-head into
  V and a full Hadamard into ``o_proj``'s input, with an online Hadamard over the heads at run time.
  We add no online op there. Q/K get an offline per-head rotation (QuaRot rotates K online after
  RoPE for its KV cache; a ViT has no RoPE, so it folds into the qkv rows).
- The online fc2 Hadamard is an explicit module (not a forward pre-hook), in float, without random
  signs (as QuaRot's down_proj one), exportable to ONNX; it is optional (``"hadamard-online"``).
- No rotation of the head's output side and no slicing (SliceGPT's PCA basis is data-dependent; a
  Hadamard needs no calibration data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from vitq.errors import UnsupportedModelError, VitqError
from vitq.nn.hadamard import OnlineHadamard, hadamard_factors, hadamard_matrix
from vitq.recipes.base import ROTATIONS as _RECIPE_ROTATIONS
from vitq.transforms.ln_folding import FoldRecord, ResidualStream, fold_layernorms, residual_stream

log = logging.getLogger(__name__)

#: the rotations a recipe or config may name (``None`` / ``"none"``: no rotation)
ROTATIONS = tuple(r for r in _RECIPE_ROTATIONS if r is not None)

try:
    from timm.layers import Mlp as _TimmMlp
except ImportError:  # timm not installed: no model this transform supports
    _TimmMlp = None

if _TimmMlp is not None:
    class HadamardMlp(_TimmMlp):
        """timm's ``Mlp`` with an :class:`~vitq.nn.hadamard.OnlineHadamard` ``x -> x M`` (``self.hadamard``) just
        before ``fc2``, whose weight is ``W M`` so that ``(x M)(W M)^T = x W^T`` (:func:`rotate_model`, step 4)."""

        hadamard: OnlineHadamard

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.drop1(self.act(self.fc1(x)))
            x = self.hadamard(self.norm(x))
            return self.drop2(self.fc2(x))
else:  # pragma: no cover
    HadamardMlp = None


# -- orthogonal matrices -------------------------------------------------------------------------------------
def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (float64): QR of a Gaussian matrix, signs fixed by diag(R)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def orthogonal_matrix(n: int, generator: torch.Generator, *, random_signs: bool = True) -> tuple[torch.Tensor, str]:
    """``(Q, description)``: ``diag(s) H / sqrt(n)`` (random signs s when ``random_signs``) when a Hadamard
    matrix of order ``n`` can be built, else a random orthogonal matrix; both from ``generator``."""
    f = hadamard_factors(n)
    if f is None:
        return random_orthogonal(n, generator), "random orthogonal"
    q = hadamard_matrix(n)
    kind = f"Hadamard {f[0]}x{f[1]}" if f[0] > 1 else f"Hadamard {n}"
    if random_signs:
        s = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
        q = s[:, None] * q
        kind = "randomized " + kind
    return q, kind


# -- folding a rotation into weights ---------------------------------------------------------------------------
def _set(p: torch.Tensor, value: torch.Tensor) -> None:
    p.data.copy_(value.to(p.dtype))


@torch.no_grad()
def rotate_output(linear: nn.Linear, q: torch.Tensor, rows: slice = slice(None)) -> None:
    """The Linear's output (its ``rows``) becomes ``y Q``: ``W <- Q^T W``, ``b <- Q^T b``."""
    w = linear.weight[rows].double()
    linear.weight.data[rows] = (q.t() @ w).to(linear.weight.dtype)
    if linear.bias is not None:
        linear.bias.data[rows] = (q.t() @ linear.bias[rows].double()).to(linear.bias.dtype)


@torch.no_grad()
def rotate_input(linear: nn.Linear, q: torch.Tensor, cols: slice = slice(None)) -> None:
    """The Linear reads ``x Q`` (its input ``cols``) instead of ``x``: ``W <- W Q``."""
    w = linear.weight[:, cols].double()
    linear.weight.data[:, cols] = (w @ q).to(linear.weight.dtype)


@torch.no_grad()
def rotate_residual(stream: ResidualStream, q: torch.Tensor) -> None:
    """Step 2: every writer's output and every reader's input by ``q`` (``d x d``, orthogonal)."""
    model = stream.model
    conv = model.patch_embed.proj
    w = conv.weight.double()
    _set(conv.weight, torch.einsum("i...,ij->j...", w, q))
    if conv.bias is not None:
        _set(conv.bias, conv.bias.double() @ q)
    for t in stream.tokens:
        p = getattr(model, t)
        _set(p, p.double() @ q)
    for b in stream.blocks:
        for writer in ("attn.proj", "mlp.fc2"):
            rotate_output(b.block.get_submodule(writer), q)
        for reader in (*b.qkv_readers, b.fc1):
            rotate_input(b.block.get_submodule(reader), q)
    for h in stream.heads:
        rotate_input(getattr(model, h), q)


@torch.no_grad()
def rotate_heads(stream: ResidualStream, generator: torch.Generator) -> tuple[int, int]:
    """Step 3: per-head Q/K and V/out-projection rotations; returns ``(qk, v)``, the blocks rotated each way.

    Q/K is skipped in a block with ``q_norm``/``k_norm``; V in one with an attention ``norm`` or ``gate``
    (a normalisation or an elementwise gate of the heads' output does not commute with a rotation).
    """
    n_qk = n_v = 0
    for b in stream.blocks:
        attn = b.block.attn
        hd, heads, ad = attn.head_dim, attn.num_heads, attn.attn_dim
        r, _ = orthogonal_matrix(hd, generator, random_signs=False)
        qk = isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
        v = isinstance(attn.norm, nn.Identity) and getattr(attn, "gate", None) is None
        for h in range(heads):
            if qk:
                rotate_output(attn.qkv, r, slice(h * hd, (h + 1) * hd))
                rotate_output(attn.qkv, r, slice(ad + h * hd, ad + (h + 1) * hd))
            if v:
                rotate_output(attn.qkv, r, slice(2 * ad + h * hd, 2 * ad + (h + 1) * hd))
                rotate_input(attn.proj, r, slice(h * hd, (h + 1) * hd))
        n_qk, n_v = n_qk + qk, n_v + v
    return n_qk, n_v


@torch.no_grad()
def add_online_hadamard(stream: ResidualStream) -> int:
    """Step 4: an :class:`OnlineHadamard` before each ``mlp.fc2``, its inverse folded into fc2's weight."""
    from vitq.models.base import clone_as

    for b in stream.blocks:
        mlp = b.block.mlp
        hidden = mlp.fc2.in_features
        new = clone_as(mlp, HadamardMlp)
        new.hadamard = OnlineHadamard(hidden).to(mlp.fc2.weight.device)
        rotate_input(new.fc2, new.hadamard.matrix())
        b.block.mlp = new
    return len(stream.blocks)


def check_online(stream: ResidualStream, who: str) -> None:
    """:class:`UnsupportedModelError` when some ``mlp.fc2`` cannot take an online Hadamard (step 4)."""
    for b in stream.blocks:
        mlp, hidden = b.block.mlp, b.block.mlp.fc2.in_features
        if hadamard_factors(hidden) is None:
            raise UnsupportedModelError(f"{who}: {b.name}.mlp.fc2 reads {hidden} channels, an order with no "
                                        "Hadamard construction here; use rotation 'hadamard'")
        if not isinstance(mlp.norm, nn.Identity):
            raise UnsupportedModelError(f"{who}: {b.name}.mlp.norm normalises fc2's input, which an online "
                                        "Hadamard would not commute with; use rotation 'hadamard'")


# -- the whole transform ---------------------------------------------------------------------------------------------
@dataclass
class RotationRecord:
    """What :func:`rotate_model` did."""

    mode: str
    seed: int
    dim: int
    residual: str  # e.g. "randomized Hadamard 12x32"
    heads_qk: int
    heads_v: int
    online: int
    fold: FoldRecord = field(default_factory=FoldRecord)
    max_change: float = 0.0  # largest |logit change| / max |logit| on the check images

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["fold"] = dict(vars(self.fold))
        return d


def _example(model: nn.Module, seed: int) -> torch.Tensor:
    dc = getattr(model, "vitq_data_config", None)
    if dc is None:
        from vitq.models.base import get_adapter

        dc = get_adapter(model).data_config(model)
    device = next(model.parameters()).device
    return torch.randn(2, *dc.input_size, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def rotate_model(model: nn.Module, mode: str = "hadamard", *, seed: int = 0, who: str | None = None,
                 check: bool = True, tol: float = 1e-3) -> RotationRecord:
    """Fold the LayerNorms and rotate the residual stream of ``model`` in place (see the module docstring).

    Args:
        model: a float timm ViT (pre-LN blocks); set to eval mode.
        mode: ``"hadamard"`` (offline rotations only) or ``"hadamard-online"`` (plus the online fc2 Hadamard).
        seed: seeds the random signs (and any random orthogonal fallback): the same seed, the same model.
        who: names the caller in errors (default ``"rotation {mode!r}"``), e.g. the recipe.
        check: compare the logits before and after on two random images.
        tol: the largest allowed logit change, relative to the largest logit magnitude.

    Raises:
        UnsupportedModelError: the model is not a supported pre-LN timm ViT (before anything is changed).
        VitqError: the logits moved by more than ``tol``.
    """
    if mode not in ROTATIONS:
        raise VitqError(f"rotation {mode!r}: choose one of {', '.join(ROTATIONS)}")
    who = who or f"rotation {mode!r}"
    model.eval()
    stream = residual_stream(model, who)
    if mode == "hadamard-online":
        check_online(stream, who)
    x = _example(model, seed) if check else None
    ref = model(x) if check else None
    gen = torch.Generator().manual_seed(seed)
    fold = fold_layernorms(stream)
    q, kind = orthogonal_matrix(stream.dim, gen)
    rotate_residual(stream, q)
    n_qk, n_v = rotate_heads(stream, gen)
    online = add_online_hadamard(stream) if mode == "hadamard-online" else 0
    rec = RotationRecord(mode, seed, stream.dim, kind, n_qk, n_v, online, fold)
    if check:
        out = model(x)
        rec.max_change = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
        if not rec.max_change <= tol:
            raise VitqError(f"{who}: folding and rotating changed the float logits by {rec.max_change:.2e} "
                            f"(relative; at most {tol:g} allowed)")
    log.info("%s: %s residual rotation (d=%d), per-head Q/K in %d and V in %d blocks, %d online Hadamards; "
             "logits moved %.1e", who, kind, stream.dim, n_qk, n_v, online, rec.max_change)
    return rec

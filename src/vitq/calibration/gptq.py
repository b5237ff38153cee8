"""GPTQ weight rounding (Frantar et al., ICLR 2023) on the op's already-searched quantization grid.

Round-to-nearest quantizes every weight on its own. GPTQ quantizes the columns (input features) of a
layer's weight one after another and, after each, moves its rounding error onto the columns not yet
quantized, in the direction that keeps the layer's output on the calibration inputs closest:
with ``H = 2 X^T X`` (``X``: the layer's inputs, one row per token / patch) and the upper Cholesky factor
``U`` of ``H^-1``,

    q_j = Q(w_j);   W[:, j:] -= (w_j - q_j) / U[j, j] * U[j, j:]

which is the Optimal Brain Quantization update done in the order of the columns, in blocks of
``block_size`` columns (lazy batch updates). It greedily lowers ``||X W^T - X Q^T||^2`` below that of
round-to-nearest with the same grid.

Our code follows the authors' ``GPTQ.fasterquant`` (github.com/IST-DASLab/gptq, ``gptq.py``): dead
columns (``diag H == 0``) get ``H[j, j] = 1`` and weight 0; dampening ``damp * mean(diag H)``;
``H^-1`` through Cholesky, then its upper Cholesky factor; blocks of 128 columns with the rank-k update
of the later columns after each block; optional act-order (columns by decreasing ``diag H``); the
grid fixed before the loop. Departures from the authors' settings:

1. **Grid.** Theirs is found by ``Quantizer.find_params`` on the weight (min-max per output row,
   asymmetric by default, ``--sym`` optional with ``scale = 2 max|w| / (2^b - 1)``). Ours is the op's
   weight quantizer as calibration left it: the symmetric signed uniform quantizer of Liu et al.
   Eq. 8 (codes ``[-2^(b-1), 2^(b-1) - 1]``, no zero point), per tensor or per output channel, with
   the scale(s) the recipe's interval search chose (``max|w| / (2^(b-1) - 1)`` for the ``gptq``
   recipe, which does not search). No groups (``groupsize=-1``, their default), so act-order needs no
   ``static_groups``: one grid for all columns.
2. **Act-order on by default** (``act_order=True``); their scripts default to off (``--act-order`` was
   added later for LLaMA, where it helps). Ties in ``diag H`` are broken stably (deterministic).
3. **Inputs.** Their ``H`` comes from the layer's input in the partly quantized network, whose
   activations are float (weight-only quantization). Here activations are quantized too, so the
   engine builds ``H`` from the op's *fake-quantized* input ``Psi(X)`` (its input quantizer applied to
   the calibration input captured with the upstream ops quantized): that is what the deployed
   matmul multiplies the weight with, so the output error the rounding causes is
   ``Psi(X) (W - Q)^T``, and ``H`` must be that of ``Psi(X)``. (The error ``(X - Psi(X)) W^T`` of the
   activation quantizer itself is not compensated by the weights: GPTQ minimises the error of
   rounding a fixed float weight.) ``H`` uses every calibration token (the op's ``OpData.a``), not
   their 128 x 2048-token samples.
4. **Order in the network.** Theirs quantizes all the Linears of a decoder block on inputs captured
   before any of them is quantized (``--true-sequential`` aside); ours runs inside the Liu et al. engine,
   op by op in forward order, so each op's inputs come from the already quantized (and GPTQ-rounded)
   ops before it — their ``--true-sequential``, finer still.
5. **Precision.** ``H``, its inverse and the error feedback are float64 (theirs float32 on GPU, TF32
   off); each column is rounded in float32 by the op's own quantizer, so the result is exactly on
   its grid (``quantizer(q) == q``, bit for bit) and deterministic on CPU.
6. **Cholesky failure.** Theirs raises; ours retries with ten times the dampening (up to 4 times).
7. **Bias.** When the recipe corrects biases (Liu et al. Eq. 13-15, ``liu2021-gptq``), the correction
   the search made for the round-to-nearest weight is redone once for the GPTQ weight (the mean
   output error of each channel on the calibration data is removed again); the authors' recipe has no
   bias correction.
8. **Convolutions.** Like theirs, a Conv2d (``groups == 1``) is seen as a Linear over its unfolded
   patches (``F.unfold``: columns in the ``(C, kh, kw)`` order of ``weight.flatten(1)``); for the patch
   embedding (kernel == stride, no padding) that is exactly the Linear over patches of
   :func:`vitq.calibration.fast_search.patch_conv_as_linear`. Grouped convolutions and
   non-``zeros`` padding modes are left with round-to-nearest (logged): a ViT has none.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.calibration.search.alternating import expected_output_error
from vitq.distributed import shard_count, shard_sum

if TYPE_CHECKING:
    from vitq.calibration.search import OpData
    from vitq.nn.qops import QuantOp

log = logging.getLogger(__name__)

#: rows of the input per chunk of the Hessian accumulation (bounds the float64 copy)
_CHUNK_ROWS = 16384


def input_hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``H = 2/n X^T X`` in float64, ``X = inputs.reshape(-1, Cin)`` (n rows), accumulated in chunks; in a
    data-parallel calibration over every rank's rows (the ranks' sums of ``X^T X`` added)."""
    x = inputs.detach().reshape(-1, inputs.shape[-1])
    h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _CHUNK_ROWS):
        c = x[i: i + _CHUNK_ROWS].double()
        h.addmm_(c.T, c)
    return shard_sum(h).mul_(2.0 / max(1, shard_count(x.shape[0])))


def _upper_cholesky_of_inverse(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``; the dampening grows tenfold on failure."""
    mean_diag = torch.diag(h).mean()
    idx = torch.arange(h.shape[0], device=h.device)
    for attempt in range(5):
        hd = h.clone()
        hd[idx, idx] += damp * (10.0 ** attempt) * mean_diag
        lower, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                if attempt:
                    log.warning("GPTQ: H not positive definite with damp=%g; used %g", damp, damp * 10.0 ** attempt)
                return upper
    raise torch.linalg.LinAlgError(f"GPTQ: the Hessian is not positive definite even with damp={damp * 1e4:g}")


def _fake_quant(quantizer: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """The quantizer's fake-quantization of a (Cout, k) block with its stored scale(s), in float32."""
    return quantizer.fake_quant_with(w.float(), quantizer.scale)


@torch.no_grad()
def gptq_round(weight: torch.Tensor, inputs: torch.Tensor, quantizer: nn.Module, *, damp: float = 0.01,
               block_size: int = 128, act_order: bool = True, hessian: torch.Tensor | None = None) -> torch.Tensor:
    """GPTQ-rounded copy of a Linear weight on ``quantizer``'s grid (see the module docstring).

    Args:
        weight: ``(Cout, Cin)``.
        inputs: ``(N, ..., Cin)``, the inputs the layer multiplies the weight with (ignored if ``hessian``).
        quantizer: the weight quantizer with its scale(s) set: a uniform quantizer, per tensor or per
            output channel (``axis=0``); ``quantizer.fake_quant_with(x, scale)`` is used, enabled or not.
        damp: dampening, a fraction of the mean diagonal of ``H`` (their ``percdamp``).
        block_size: columns per lazy batch update (theirs: 128); the result does not depend on it
            beyond float rounding.
        act_order: quantize the columns in order of decreasing ``diag H``.
        hessian: a precomputed ``H`` (``(Cin, Cin)``), instead of ``inputs``.

    Returns:
        The rounded weight, ``weight``'s shape and dtype, with ``quantizer.fake_quant_with(q, scale) == q``.
    """
    if weight.dim() != 2:
        raise ValueError(f"gptq_round expects a (Cout, Cin) weight, got {tuple(weight.shape)}")
    if block_size < 1 or damp <= 0:
        raise ValueError(f"block_size={block_size} must be >= 1 and damp={damp} > 0")
    cout, cin = weight.shape
    h = input_hessian(inputs) if hessian is None else hessian.to(torch.float64).clone()
    if h.shape != (cin, cin):
        raise ValueError(f"the Hessian is {tuple(h.shape)}, the weight has {cin} input columns")
    w = weight.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    hinv = _upper_cholesky_of_inverse(h, damp)
    q = torch.zeros(cout, cin, dtype=torch.float32, device=weight.device)
    for i1 in range(0, cin, block_size):
        i2 = min(i1 + block_size, cin)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i: i + 1]
            qc = _fake_quant(quantizer, col)
            q[:, i1 + i: i1 + i + 1] = qc
            e = (col - qc.double()) / hinv1[i, i]
            w1[:, i:] -= e * hinv1[i: i + 1, i:]
            err1[:, i: i + 1] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    out = q.to(weight.dtype)
    if not torch.equal(_fake_quant(quantizer, out).to(out.dtype), out):  # cannot happen with Eq. 8; guards other grids
        raise RuntimeError("GPTQ produced weights off the quantizer's grid")
    return out


@dataclass
class GptqStats:
    """``||Psi(X) (W - Q)^T||^2 / n`` (the proxy GPTQ minimises) with round-to-nearest and with GPTQ."""

    name: str
    rtn_error: float
    gptq_error: float
    skipped: str | None = None


def _layer_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    d = (w.double() - q.double())
    return float(((d @ h) * d).sum() / 2)


@contextmanager
def _enabled(quantizer: nn.Module):
    was = quantizer.enabled
    quantizer.enabled = True
    try:
        yield quantizer
    finally:
        quantizer.enabled = was


def _conv_as_linear(op: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """Conv input ``(N, C, H, W)`` unfolded to ``(N, L, C*kh*kw)`` (columns in ``weight.flatten(1)``'s order),
    or None where a Linear view does not hold (groups, non-zero padding modes, ``padding='same'``)."""
    if op.groups != 1 or op.padding_mode != "zeros":
        return None
    padding = op.padding
    if isinstance(padding, str):
        if padding != "valid":
            return None
        padding = 0
    cols = F.unfold(x, op.kernel_size, dilation=op.dilation, padding=padding, stride=op.stride)
    return cols.transpose(1, 2)


@torch.no_grad()
def apply_gptq(op: QuantOp, name: str, data: OpData, *, bias_correction: bool = False, damp: float = 0.01,
               block_size: int = 128, act_order: bool = True) -> GptqStats:
    """GPTQ-round a Linear / Conv op's weight in place, on its calibrated weight grid (the engine's call).

    The Hessian is built from the op's fake-quantized calibration input (its input quantizer applied to
    ``data.a``; see the module docstring, point 3). With ``bias_correction`` the bias is re-corrected
    for the new weight (point 7). The weight quantizer's scale(s) are unchanged.
    """
    qa, qb = op.quantizers()
    if op.role == "conv":
        with _enabled(qa):
            x = _conv_as_linear(op, qa(data.a))
        if x is None:
            log.info("GPTQ: %s left with round-to-nearest (grouped conv or padding mode %r has no Linear view)",
                     name, op.padding_mode)
            return GptqStats(name, float("nan"), float("nan"), skipped="conv without a Linear view")
    elif op.role == "linear":
        with _enabled(qa):
            x = qa(data.a)
    else:
        raise ValueError(f"GPTQ rounds weights: op {name} ({op.role}) has none")
    w = op.weight.detach()
    w2 = w.reshape(w.shape[0], -1)
    h = input_hessian(x)
    del x
    q = gptq_round(w2, None, qb, damp=damp, block_size=block_size, act_order=act_order, hessian=h)
    stats = GptqStats(name, _layer_error(w2, _fake_quant(qb, w2), h), _layer_error(w2, q, h))
    op.weight.copy_(q.reshape(w.shape))
    if bias_correction and getattr(op, "bias", None) is not None:
        _recorrect_bias(op, data)
    log.debug("GPTQ %s: output error %.4g (nearest) -> %.4g", name, stats.rtn_error, stats.gptq_error)
    return stats


def _recorrect_bias(op: QuantOp, data: OpData) -> None:
    """Liu et al. Eq. 13-15 once more for the new weight: ``b <- b - E[O_hat - O]`` per output channel.

    The bias in place was corrected for the round-to-nearest weight; the output is affine in the bias,
    so subtracting the mean error measured with it in place zeroes the mean error of the new weight.
    """
    qa, qb = op.quantizers()
    n = data.a.shape[0]
    chunk = max(1, (1 << 22) // max(1, data.target[0].numel()))
    err = None
    with _enabled(qa), _enabled(qb):
        wq = qb(op.weight)
        for i in range(0, n, chunk):
            out = op.compute(qa(data.a[i: i + chunk]), wq)
            e = expected_output_error(out, data.target[i: i + chunk], op.channel_dim) * out.shape[0]
            err = e if err is None else err + e
    op.bias.copy_((op.bias.double() - shard_sum(err) / shard_count(n)).to(op.bias.dtype))

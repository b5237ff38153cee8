"""Per-channel shift and scale of a LayerNorm's output, folded into the LayerNorm and the next Linear.

One exact identity serves three methods. For a LayerNorm whose output X feeds Linear layers
Y = X W^T + b directly, and any per-channel shift z and scale s > 0:

    X' = (X - z) / s      gamma' = gamma / s,  beta' = (beta - z) / s        (into the LayerNorm)
    W' = W diag(s)        b' = b + W z                                       (into each Linear)

so X' W'^T + b' = X W^T + b: the float model is unchanged and nothing is added at run time. The
methods differ only in how they choose z and s (:func:`fold_norm_into_linears` does the folding):

- **SQ-b** (MPTQ-ViT's SmoothQuant with a bias term; the formulas are our design [D], see
  ``mptq-vit-design.md``): z_j = (max_t X_tj + min_t X_tj) / 2, the channel's range midpoint, and
  s_j = max_t |X_tj - z_j|^alpha / max_k |W_kj|^(1 - alpha). Centring makes each channel symmetric,
  which is what a symmetric (zero-point-free) activation quantizer wants.
- **SmoothQuant** (Xiao et al. 2023): the same s with z = 0 (``shift=False``), so the bias term's
  effect can be measured on its own.
- **RepQ-ViT** scale reparameterisation (Li et al. 2023): calibrate an asymmetric quantizer per
  channel (scale s_j, zero point z_j), then reparameterise to the per-tensor s~ = mean(s_j),
  z~ = mean(z_j): r_j = s_j / s~, X' = X / r - (min_j / r_j - min~), i.e. scale r and shift
  r * (min_j / r_j - min~) (:func:`repq_factors`).

alpha is searched per LayerNorm on the calibration data over a small grid, keeping the alpha with the
lowest quantized-output error of the Linear layers it feeds (:func:`choose_alpha`), over
:data:`DEFAULT_ALPHAS`. Optionally the
attention output projection is smoothed the same way through the V rows of qkv
(:func:`fold_into_value_rows`): softmax rows sum to 1, so a per-channel shift and scale of V pass
through attn @ V unchanged.

:func:`smooth_unit` applies one of these to every LayerNorm -> Linear pair of a calibration unit,
found by data flow (:mod:`vitq.transforms.tracing`), and checks that the unit's float output did not
change (a LayerNorm whose output also feeds something else cannot be folded this way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.errors import UnsupportedModelError, VitqError
from vitq.quantizers.uniform import fake_quantize, max_scale
from vitq.transforms.tracing import trace_consumers

log = logging.getLogger(__name__)

#: alpha grid of the SQ-b / SmoothQuant search: the design's "0.3 to 0.8" extended down to 0, since on
#: fmnist-vit at W4A4 the per-LayerNorm optimum lies at 0.0-0.3
DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: activation clipping factors tried for each alpha (the later interval search clips too)
_CLIPS = (1.0, 0.8, 0.6)
#: tokens used to score alpha candidates
_MAX_TOKENS = 2048
#: RepQ-ViT's per-channel range candidates (percentiles of each channel)
REPQ_PERCENTILES = (0.999, 0.9999, 0.99999)
_EPS = 1e-5


# -- folding -------------------------------------------------------------------------------------------
@torch.no_grad()
def fold_norm_into_linears(norm: nn.LayerNorm, linears: list[nn.Linear], shift: torch.Tensor,
                           scale: torch.Tensor) -> None:
    """Fold X' = (X - shift) / scale into ``norm`` (gamma, beta) and every Linear reading its output."""
    if norm.weight is None:
        raise VitqError("cannot fold into a LayerNorm without elementwise affine parameters")
    z, s = shift.double(), scale.double()
    if bool((z != 0).any()):
        if norm.bias is None or any(lin.bias is None for lin in linears):
            raise VitqError("folding a shift needs a LayerNorm bias and a bias on every Linear it feeds")
    for lin in linears:
        w = lin.weight.double()
        if lin.bias is not None:
            lin.bias.copy_((lin.bias.double() + w @ z).to(lin.bias.dtype))
        lin.weight.copy_((w * s[None, :]).to(lin.weight.dtype))
    norm.weight.copy_((norm.weight.double() / s).to(norm.weight.dtype))
    if norm.bias is not None:
        norm.bias.copy_(((norm.bias.double() - z) / s).to(norm.bias.dtype))


@torch.no_grad()
def fold_into_value_rows(v_linear: nn.Linear, rows: slice, out_linear: nn.Linear, shift: torch.Tensor,
                         scale: torch.Tensor) -> None:
    """Fold a per-channel (shift, scale) of the attention context into the V rows of ``v_linear`` and the
    input of ``out_linear`` (exact because each attention row sums to 1)."""
    z, s = shift.double(), scale.double()
    if bool((z != 0).any()) and (v_linear.bias is None or out_linear.bias is None):
        raise VitqError("folding a shift through V needs biases on the V projection and the output projection")
    wv = v_linear.weight[rows].double()
    v_linear.weight[rows] = (wv / s[:, None]).to(v_linear.weight.dtype)
    if v_linear.bias is not None:
        v_linear.bias[rows] = ((v_linear.bias[rows].double() - z) / s).to(v_linear.bias.dtype)
    wo = out_linear.weight.double()
    if out_linear.bias is not None:
        out_linear.bias.copy_((out_linear.bias.double() + wo @ z).to(out_linear.bias.dtype))
    out_linear.weight.copy_((wo * s[None, :]).to(out_linear.weight.dtype))


# -- choosing the factors --------------------------------------------------------------------------------
def smoothquant_factors(x_min: torch.Tensor, x_max: torch.Tensor, w_absmax: torch.Tensor, alpha: float,
                        shift: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SQ-b (``shift=True``) or SmoothQuant (``shift=False``) per-channel (shift, scale)."""
    z = (x_max + x_min) / 2 if shift else torch.zeros_like(x_max)
    a = torch.maximum((x_max - z).abs(), (x_min - z).abs()).clamp_min(_EPS)
    s = a.pow(alpha) / w_absmax.clamp_min(_EPS).pow(1 - alpha)
    return z, s.clamp_min(_EPS)


def _channel_percentile_range(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, RepQ-ViT's best asymmetric range among the percentile candidates (least MSE)."""
    levels = 2**bits - 1
    best_err = best_lo = best_hi = None
    for p in REPQ_PERCENTILES:
        hi = torch.quantile(x, p, dim=0)
        lo = torch.quantile(x, 1 - p, dim=0)
        s = ((hi - lo) / levels).clamp_min(_EPS)
        zp = torch.round(-lo / s)
        xq = (torch.round(x / s).add(zp).clamp(0, levels).sub(zp)) * s
        err = (xq - x).pow(2).mean(dim=0)
        if best_err is None:
            best_err, best_lo, best_hi = err, lo, hi
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
    return best_lo, best_hi


def repq_reparameterisation(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """RepQ-ViT's reparameterisation of per-channel asymmetric intervals to one per-tensor interval.

    Args:
        x: post-LayerNorm activations ``(tokens, channels)``.
        bits: the activation bit-width.

    Returns:
        ``(shift, scale, s~, z~)``: shift and scale for :func:`fold_norm_into_linears`,
        X' = X / r - b = (X - r b) / r, and the per-tensor interval of X' the authors' code sets on the
        next Linear's input quantizer: s~ = mean(s_j), z~ = mean(z_j) (not rounded, as theirs).
    """
    x = _subsample(x.float(), 1 << 15)
    lo, hi = _channel_percentile_range(x, bits)
    s = ((hi - lo) / (2**bits - 1)).clamp_min(_EPS)
    zp = torch.round(-lo / s)
    s_t, zp_t = s.mean(), zp.mean()
    r = s / s_t
    b = (-zp * s) / r - (-zp_t * s_t)
    return b * r, r, float(s_t), float(zp_t)


def repq_factors(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)`` of :func:`repq_reparameterisation`."""
    return repq_reparameterisation(x, bits)[:2]


def _subsample(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    return x if x.shape[0] <= max_rows else x[:: -(-x.shape[0] // max_rows)]


def _fq_weight(lin: nn.Module, w: torch.Tensor) -> torch.Tensor:
    qb = lin.quantizers()[1] if hasattr(lin, "quantizers") else None
    bits = getattr(qb, "bits", 8)
    axis = getattr(qb, "axis", None)
    scale = max_scale(w, bits, True, axis)
    return fake_quantize(w, scale.view(-1, 1) if axis is not None else scale, bits)


def _a_bits(lin: nn.Module) -> int:
    return lin.quantizers()[0].bits if hasattr(lin, "quantizers") else 8


@torch.no_grad()
def choose_alpha(x: torch.Tensor, linears: list[nn.Linear], alphas: tuple[float, ...], shift: bool,
                 x_min: torch.Tensor | None = None, x_max: torch.Tensor | None = None) -> tuple[float, dict]:
    """The alpha of SQ-b / SmoothQuant with the lowest quantized-output error of ``linears`` on ``x``.

    Each candidate is scored by sum over the Linears of ||Y_hat - Y||^2 / ||Y||^2, with the smoothed
    input fake-quantized per tensor at the Linear's input bits (best of a few clipping factors) and
    the smoothed weight at its weight bits and granularity (max interval).
    """
    x = x.reshape(-1, x.shape[-1]).float()
    x_min = x.amin(dim=0) if x_min is None else x_min
    x_max = x.amax(dim=0) if x_max is None else x_max
    xs = _subsample(x, _MAX_TOKENS)
    refs = [F.linear(xs, lin.weight, lin.bias) for lin in linears]
    energy = [r.pow(2).mean().clamp_min(1e-30) for r in refs]
    w_absmax = torch.stack([lin.weight.detach().abs().amax(dim=0) for lin in linears]).amax(dim=0)
    bits = _a_bits(linears[0])
    losses = {}
    for alpha in alphas:
        z, s = smoothquant_factors(x_min, x_max, w_absmax, alpha, shift)
        x2 = (xs - z) / s
        wq = [_fq_weight(lin, lin.weight * s[None, :]) for lin in linears]
        b2 = [lin.bias + lin.weight @ z if lin.bias is not None else None for lin in linears]
        top = max_scale(x2, bits)
        best = float("inf")
        for c in _CLIPS:
            xq = fake_quantize(x2, top * c, bits)
            err = sum(((F.linear(xq, w, b) - r).pow(2).mean() / e).item()
                      for w, b, r, e in zip(wq, b2, refs, energy))
            best = min(best, err)
        losses[alpha] = best
    return min(losses, key=losses.__getitem__), losses


# -- one calibration unit ----------------------------------------------------------------------------------
@dataclass
class SmoothingRecord:
    """What was folded: the LayerNorm (or attention module for V smoothing), its Linears, alpha."""

    norm: str
    linears: list[str]
    mode: str
    alpha: float | None = None
    alpha_losses: dict = field(default_factory=dict)
    #: ``repq``: the per-tensor interval ``(scale, zero_point)`` of the reparameterised output
    interval: tuple[float, float] | None = None


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return [t for o in getattr(obj, "values", lambda: [])() for t in _tensors(o)]


def norm_linear_groups(unit: nn.Module, inputs) -> dict[str, list[str]]:
    """LayerNorms of ``unit`` whose output feeds Linear layers directly: ``{norm: [linears]}``."""
    args, kwargs = inputs[0]
    return trace_consumers(unit, lambda: unit(*args, **kwargs), lambda m: isinstance(m, nn.LayerNorm),
                           lambda m: isinstance(m, nn.Linear))


def value_output_pairs(unit: nn.Module) -> list[tuple[str, nn.Linear, slice, nn.Linear]]:
    """Attention modules whose V projection and output projection can carry a V smoothing:
    ``(name, v_linear, v_rows, out_linear)`` for timm ``Attention`` (V = last third of qkv) and the
    Hugging Face ViT-family attention (``v_proj``, ``o_proj``)."""
    pairs = []
    try:
        from timm.layers import Attention as TimmAttention
    except ImportError:  # timm not installed
        TimmAttention = ()
    try:
        from vitq.models.hf_vit import QuantHFAttentionMixin
    except ImportError:  # transformers not installed
        QuantHFAttentionMixin = ()
    for name, m in unit.named_modules():
        if TimmAttention and isinstance(m, TimmAttention) and isinstance(getattr(m, "norm", None), nn.Identity):
            c = m.qkv.out_features // 3
            pairs.append((name, m.qkv, slice(2 * c, 3 * c), m.proj))
        elif QuantHFAttentionMixin and isinstance(m, QuantHFAttentionMixin) and hasattr(m, "v_proj"):
            pairs.append((name, m.v_proj, slice(0, m.v_proj.out_features), m.o_proj))
    return pairs


@torch.no_grad()
def smooth_unit(unit: nn.Module, inputs, mode: str, *, alpha: float | None = None,
                alphas: tuple[float, ...] = DEFAULT_ALPHAS, value_rows: bool = False,
                is_quantized=lambda m: True, tol: float = 1e-3) -> list[SmoothingRecord]:
    """Fold per-channel factors into every LayerNorm -> Linear group of ``unit`` (in place).

    Args:
        unit: a calibration unit (e.g. one transformer block), its quantizers disabled.
        inputs: the unit's calibration inputs, a list of ``(args, kwargs)`` per batch.
        mode: ``"sqb"``, ``"smoothquant"`` or ``"repq"``.
        alpha: fixed alpha for sqb / smoothquant; ``None`` searches ``alphas``.
        value_rows: also smooth the attention output projection through V (sqb / smoothquant).
        is_quantized: predicate on a Linear; groups with an unquantized Linear are left alone.
        tol: largest allowed change of the unit's float output, relative to its max magnitude.

    Raises:
        UnsupportedModelError: the unit's output changed, i.e. some LayerNorm output also feeds a non-Linear path.
    """
    if mode not in ("sqb", "smoothquant", "repq"):
        raise VitqError(f"smoothing mode {mode!r}: choose 'sqb', 'smoothquant' or 'repq'")
    mods = dict(unit.named_modules())
    groups = {n: ls for n, ls in norm_linear_groups(unit, inputs).items() if all(is_quantized(mods[li]) for li in ls)}
    vpairs = value_output_pairs(unit) if value_rows and mode != "repq" else []
    if not groups and not vpairs:
        return []
    # capture each LayerNorm's output and each output projection's input over all calibration batches
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [mods[n].register_forward_hook(lambda _m, _a, o, n=n: seen.setdefault(n, []).append(o.detach()))
               for n in groups]
    handles += [out.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, []).append(a[0].detach()))
                for n, _v, _r, out in vpairs]
    try:
        before = [_tensors(unit(*a, **k)) for a, k in inputs]
    finally:
        for h in handles:
            h.remove()
    params = [p for n in groups for p in mods[n].parameters()]
    params += [p for ls in groups.values() for li in ls for p in mods[li].parameters()]
    params += [p for _n, v, _r, out in vpairs for p in (*v.parameters(), *out.parameters())]
    saved = [p.detach().clone() for p in params]

    records = []
    for n, ls in groups.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen.pop(n)])
        linears = [mods[li] for li in ls]
        if mode == "repq":
            shift, scale, s_t, zp_t = repq_reparameterisation(x, _a_bits(linears[0]))
            rec = SmoothingRecord(n, ls, mode, interval=(s_t, zp_t))
        else:
            a, losses = (alpha, {}) if alpha is not None else choose_alpha(x, linears, alphas, mode == "sqb")
            w_absmax = torch.stack([li.weight.abs().amax(dim=0) for li in linears]).amax(dim=0)
            shift, scale = smoothquant_factors(x.amin(dim=0), x.amax(dim=0), w_absmax, a, mode == "sqb")
            rec = SmoothingRecord(n, ls, mode, a, losses)
        if bool((shift != 0).any()) and (mods[n].bias is None or any(li.bias is None for li in linears)):
            log.warning("%s: no bias to carry the shift; folding the scale only", n)
            shift = torch.zeros_like(shift)
        fold_norm_into_linears(mods[n], linears, shift, scale)
        records.append(rec)
    for n, v, rows, out in vpairs:
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen.pop(n)])
        a, losses = (alpha, {}) if alpha is not None else choose_alpha(x, [out], alphas, mode == "sqb")
        shift, scale = smoothquant_factors(x.amin(dim=0), x.amax(dim=0), out.weight.abs().amax(dim=0), a, mode == "sqb")
        if v.bias is None or out.bias is None:
            shift = torch.zeros_like(shift)
        fold_into_value_rows(v, rows, out, shift, scale)
        records.append(SmoothingRecord(n, [f"{n}.v", f"{n}.out"], mode + "-v", a, losses))

    after = [_tensors(unit(*a, **k)) for a, k in inputs]
    worst = max(((y1 - y0).abs().max() / y0.abs().max().clamp_min(1e-12)).item()
                for ys0, ys1 in zip(before, after) for y0, y1 in zip(ys0, ys1) if y0.is_floating_point())
    if worst > tol:
        for p, s in zip(params, saved):
            p.copy_(s)
        raise UnsupportedModelError(
            f"{mode} folding changed the float output of {type(unit).__name__} by {worst:.2e} (relative): a "
            f"LayerNorm among {sorted(groups)} feeds more than the Linear layers {sorted(groups.values())} (e.g. "
            "the residual of a post-norm block, as in DETR), so smoothing cannot be folded into it; the unit "
            "is left as it was"
        )
    log.debug("%s folded %d groups (max relative change %.1e)", mode, len(records), worst)
    return records

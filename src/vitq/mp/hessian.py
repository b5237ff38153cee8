"""Hessian-trace sensitivity, the HAWQ-v2 baseline of Liu et al. Table 4.

    Omega_u(b) = Tr(H_u) / n_u * ||Q_b(W_u) - W_u||^2                       (HAWQ-v2)

H_u is the Hessian of the loss with respect to unit u's weights (n_u of them), its trace estimated by
Hutchinson's method, ``Tr(H) = E[v^T H v]`` with Rademacher v, using Hessian-vector products from two
``torch.autograd.grad`` calls. The loss needs no labels: ``KL(p_float || p_model)`` on the calibration
images, with p_float the float model's own softmax (a constant). At the float point its gradient is
zero but its Hessian is ``J^T (diag(p) - p p^T) J``, the Gauss-Newton / Fisher matrix: positive
semi-definite, so every trace estimate is a sum of non-negative terms in expectation. Q_b uses the
max-covering interval (per tensor, or per channel when the weights are per channel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vitq.errors import ConfigError
from vitq.mp.units import MPUnit
from vitq.nn.qops import quant_ops
from vitq.quantizers.uniform import fake_quantize, max_scale


def hutchinson_trace(loss_fn: Callable[[], torch.Tensor], groups: Sequence[Sequence[torch.Tensor]],
                     num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Hutchinson estimates of ``Tr(H_g)`` for each group g of parameters, ``H_g`` the diagonal block of
    the loss Hessian over that group's parameters.

    Args:
        loss_fn: computes the scalar loss (called once; its graph is reused for every sample).
        groups: parameter tensors (``requires_grad=True``) per group.
        num_samples: Rademacher vectors drawn.
        generator: seeds the vectors (drawn on the CPU).

    Returns:
        ``(len(groups),)`` float64 tensor of trace estimates.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples!r} must be a positive integer")
    params = [p for g in groups for p in g]
    sizes = [len(g) for g in groups]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    est = torch.zeros(len(groups), dtype=torch.float64)
    for s in range(num_samples):
        vs = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=s < num_samples - 1)
        vhv = [(v.double() * h.double()).sum() for v, h in zip(vs, hv)]
        start = 0
        for gi, n in enumerate(sizes):
            est[gi] += sum(vhv[start:start + n], torch.zeros((), dtype=torch.float64)).item()
            start += n
    return est / num_samples


def kl_to_float(logits: torch.Tensor, ref_probs: torch.Tensor) -> torch.Tensor:
    """``KL(ref || softmax(logits))`` averaged over the batch."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), ref_probs, reduction="batchmean")


def unit_weights(qmodel: nn.Module, unit: MPUnit) -> list[torch.Tensor]:
    ops = quant_ops(qmodel)
    return [ops[n].weight for n in unit.ops if ops[n].has_weight]


def weight_error(qmodel: nn.Module, unit: MPUnit, bits: int) -> float:
    """``||Q_b(W) - W||^2`` summed over the unit's weights, max-covering intervals."""
    ops = quant_ops(qmodel)
    total = 0.0
    for n in unit.ops:
        op = ops[n]
        if not op.has_weight:
            continue
        w = op.weight.detach()
        qb = op.quantizers()[1]
        scale = qb.broadcast_scale(w, max_scale(w, bits, qb.signed, qb.axis).reshape(qb.scale.shape))
        total += (fake_quantize(w, scale, bits, qb.signed) - w).double().pow(2).sum().item()
    return total


def hessian_traces(qmodel: nn.Module, units: Sequence[MPUnit], batches: Sequence[torch.Tensor], *,
                   num_samples: int = 16, seed: int = 0, progress: bool = False) -> dict[str, float]:
    """Hutchinson estimate of ``Tr(H_u)`` per unit, averaged over the calibration batches (image-weighted).

    ``qmodel`` runs in float (its quantizers must be disabled, as right after :func:`vitq.quantize`).
    """
    from vitq.eval.metrics import logits_of
    from vitq.info import get_quant_info

    empty = [u.name for u in units if u.weight_numel == 0]
    if empty:
        raise ConfigError(f"method='hessian' measures weight Hessians, but units {empty[:3]} have no weights "
                          "(attention matmuls at granularity='op'); use granularity='module' or method='nuclear'")
    forward = get_quant_info(qmodel).forward
    groups = [unit_weights(qmodel, u) for u in units]
    flags = {id(p): p.requires_grad for p in qmodel.parameters()}
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(units), dtype=torch.float64)
    n_images = 0
    try:
        for p in qmodel.parameters():
            p.requires_grad_(False)
        for g in groups:
            for p in g:
                p.requires_grad_(True)
        with torch.enable_grad():
            for images in tqdm(batches, desc="hessian traces", unit="batch", disable=not progress):
                def loss_fn(images=images):
                    logits = logits_of(forward(qmodel, images))
                    return kl_to_float(logits, F.softmax(logits.detach().float(), dim=-1))

                total += hutchinson_trace(loss_fn, groups, num_samples, gen) * images.shape[0]
                n_images += images.shape[0]
    finally:
        for p in qmodel.parameters():
            p.requires_grad_(flags[id(p)])
    return {u.name: float(t) / n_images for u, t in zip(units, total)}


def hessian_sensitivity(qmodel: nn.Module, units: Sequence[MPUnit], candidates: Sequence[int],
                        batches: Sequence[torch.Tensor], *, num_samples: int = 16, seed: int = 0,
                        progress: bool = False) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """HAWQ-v2 ``Omega_u(b)`` for every unit and candidate; returns ``(omega, traces)``."""
    traces = hessian_traces(qmodel, units, batches, num_samples=num_samples, seed=seed, progress=progress)
    omega = {u.name: {b: traces[u.name] / u.weight_numel * weight_error(qmodel, u, b) for b in candidates}
             for u in units}
    return omega, traces

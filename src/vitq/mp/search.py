"""``search_plan``: find a mixed-precision plan for a model within a size budget.

    result = vitq.mp.search_plan(model, calib_images, method="nuclear", bits=6)   # size of uniform 6-bit
    qmodel = vitq.quantize(model, vitq.QuantConfig(w_bits=6, a_bits=6, plan=result.plan))
    vitq.calibrate(qmodel, calib_images)

Methods: ``"nuclear"`` (Liu et al. Eq. 16-17 + exact Pareto DP), ``"hessian"`` (HAWQ-v2 traces + the same
DP, the paper's Table 4 baseline), ``"greedy"`` (MPTQ-ViT-style, our design; see :mod:`vitq.mp.greedy`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from vitq.errors import ConfigError
from vitq.mp.nuclear import MSA_FEATURES
from vitq.mp.pareto import pareto_frontier, select
from vitq.mp.plan import MPResult, build_plan
from vitq.mp.size import BITS_PER_MB, budget_bits, build_size_model
from vitq.mp.units import find_units
from vitq.nn.qops import quant_ops
from vitq.quantizers.uniform import check_bits

log = logging.getLogger(__name__)

MP_METHODS = ("nuclear", "hessian", "greedy")


def default_candidates(bits: int) -> list[int]:
    """Candidate bit-widths around a target: {b-2, ..., b+2} as the paper uses ({4..8} for 6 bits, {6..10}
    for 8 bits), but never below 3 bits unless the target is (so {3..6} for 4 bits, {3..5} for 3 bits)."""
    check_bits(bits, "bits")
    return list(range(min(bits, max(3, bits - 2)), min(16, bits + 2) + 1))


def _candidates(candidates: Iterable[int] | None, target: int) -> list[int]:
    cands = sorted(set(candidates)) if candidates is not None else default_candidates(target)
    if not cands:
        raise ConfigError("candidates is empty: give at least one bit-width")
    for b in cands:
        check_bits(b, "candidate bits")
    return cands


def search_plan(model: nn.Module, calib_images: torch.Tensor | Iterable, *, method: str = "nuclear",
                bits: int | None = None, budget_mb: float | None = None, candidates: Sequence[int] | None = None,
                granularity: str = "module", include_other: bool = False, base_bits: int | None = None,
                init: str = "percentile", per_channel_weights: bool = False, quantize_head: bool = False,
                batch_size: int = 32, seed: int = 0, hessian_samples: int = 16, greedy_images: int | None = None,
                refill: bool = True, msa_feature: str = "attention", progress: bool = False) -> MPResult:
    """Search per-unit bit-widths that minimise the method's sensitivity within a model-size budget.

    Args:
        model: the float model (left untouched).
        calib_images: preprocessed calibration images ``(N, C, H, W)`` (or an iterable of batches).
        method: ``"nuclear"``, ``"hessian"`` or ``"greedy"``.
        bits: target average bit-width: the budget is the size of the uniform ``bits`` model (Liu et al.'s
            "6 MP" / "8 MP"); also the default base bits and the centre of the default candidates.
        budget_mb: the budget in MB (10^6 bytes) instead (takes precedence over ``bits`` for the budget).
        candidates: bit-widths a unit may take (default :func:`default_candidates`).
        granularity: ``"module"`` (one bit-width per MSA and per MLP, the paper) or ``"op"``.
        include_other: make the patch embedding (and patch merging, a quantized head) units too;
            otherwise they keep ``base_bits``.
        base_bits: bits of ops outside every unit (default ``bits``, else 8).
        init: cheap intervals of the sensitivity probe, ``"percentile"`` or ``"minmax"`` (nuclear, greedy).
        per_channel_weights, quantize_head, batch_size, seed: as in :class:`vitq.QuantConfig`; use the values
            the plan will be calibrated with.
        hessian_samples: Hutchinson vectors per batch (hessian).
        greedy_images: measure the greedy loss on the first this many calibration images (default all).
        refill: greedy only: spend the slack left under the budget (see :mod:`vitq.mp.greedy`).
        msa_feature: nuclear only: ``"attention"`` (the attention map, Eq. 17 as printed) or ``"output"``
            (the MSA output; see :mod:`vitq.mp.nuclear`).

    Returns:
        An :class:`MPResult`; ``result.plan`` goes into ``QuantConfig(plan=...)``. A budget at or above the
        largest model the candidates allow is not binding: every unit then gets the largest candidate (the
        search is skipped, a warning says so, ``result.budget_binding`` is False); ``result.bits_range`` and
        ``result.summary()`` give the bits the plan actually uses.

    Raises:
        ConfigError: unknown method, bad bits, or a budget below the all-lowest-candidates model.
    """
    import vitq
    from vitq.calibration.engine import as_batches
    from vitq.mp.probe import QuantProbe

    if method not in MP_METHODS:
        raise ConfigError(f"method={method!r}: choose one of {', '.join(MP_METHODS)}")
    if msa_feature not in MSA_FEATURES:
        raise ConfigError(f"msa_feature={msa_feature!r}: choose one of {', '.join(MSA_FEATURES)}")
    if bits is None and budget_mb is None:
        raise ConfigError("give a budget: bits=<target average bit-width> or budget_mb=<MB>")
    if bits is not None:
        check_bits(bits, "bits")
    base = check_bits(base_bits if base_bits is not None else (bits if bits is not None else 8), "base_bits")
    cands = _candidates(candidates, bits if bits is not None else base)
    t0 = time.perf_counter()
    batches = as_batches(calib_images, batch_size)
    images = torch.cat(batches)
    probe = None
    if method in ("nuclear", "greedy"):
        probe = QuantProbe(model, images, init=init, ref_bits=max(cands + [base]),
                           per_channel_weights=per_channel_weights, quantize_head=quantize_head,
                           batch_size=batch_size, seed=seed)
        qmodel = probe.qmodel
    else:
        qmodel = vitq.quantize(model, vitq.QuantConfig(per_channel_weights=per_channel_weights,
                                                       quantize_head=quantize_head, batch_size=batch_size, seed=seed))
    units, fixed = find_units(qmodel, images[:1], granularity, include_other)
    size = build_size_model(qmodel, units, base)
    capacity = budget_bits(size, bits=bits, budget_mb=budget_mb)
    smallest = size.bits([cands[0]] * len(units))
    if smallest > capacity:
        raise ConfigError(
            f"budget {capacity / BITS_PER_MB:.4f} MB is below the smallest model the candidates allow: "
            f"{smallest / BITS_PER_MB:.4f} MB (every unit at {cands[0]} bits, fixed ops at {base} bits); "
            f"raise the budget or add lower candidate bit-widths")
    log.info("mixed precision (%s): %d units, candidates %s, budget %.4f MB", method, len(units), cands,
             capacity / BITS_PER_MB)
    largest = size.bits([cands[-1]] * len(units))
    binding = capacity < largest
    extra: dict = {}
    if not binding:
        # every configuration fits: the search cannot change the answer, so it is skipped
        log.warning("mixed precision (%s): the budget %.4f MB is not binding: it is at or above the largest model "
                    "the candidates allow, %.4f MB; every unit gets the largest candidate, %d bits%s (lower it "
                    "with --candidates / candidates=)", method, capacity / BITS_PER_MB, largest / BITS_PER_MB,
                    cands[-1], f", above the base {base} bits" if cands[-1] > base else "")
        unit_bits = [cands[-1]] * len(units)
        sens, frontier = {}, []
    elif method == "greedy":
        from vitq.mp.greedy import greedy_allocate

        sub = batches if greedy_images is None else as_batches(images[:greedy_images], batch_size)
        unit_bits, steps, sens = greedy_allocate(probe, units, cands, size, capacity, sub, fixed_ops=fixed,
                                                 refill=refill, progress=progress)
        frontier = [{"size_mb": s.size_bits / BITS_PER_MB, "omega": s.loss, "unit": s.unit, "bits": s.bits}
                    for s in steps]
        extra["steps"] = len(steps)
    else:
        if method == "nuclear":
            from vitq.mp.nuclear import nuclear_sensitivity

            sens, nuc = nuclear_sensitivity(probe, units, cands, batches, msa_feature=msa_feature,
                                            progress=progress)
            extra.update(nuclear_norms=nuc, msa_feature=msa_feature)
        else:
            from vitq.mp.hessian import hessian_sensitivity

            sens, traces = hessian_sensitivity(qmodel, units, cands, batches, num_samples=hessian_samples,
                                               seed=seed, progress=progress)
            extra["hessian_traces"] = traces
        costs = [[u.weight_numel * b for b in cands] for u in units]
        omegas = [[sens[u.name][b] for b in cands] for u in units]
        points = pareto_frontier(costs, omegas)
        best = select(points, capacity - size.fixed_bits)
        unit_bits = [cands[j] for j in best.choice]
        frontier = [{"size_mb": (size.fixed_bits + p.cost) / BITS_PER_MB, "omega": p.omega} for p in points]
        extra["omega"] = best.omega
    plan = build_plan(list(quant_ops(qmodel)), units, unit_bits, base)
    result = MPResult(
        plan=plan, unit_bits={u.name: b for u, b in zip(units, unit_bits)}, size_mb=size.mb(unit_bits),
        budget_mb=capacity / BITS_PER_MB, method=method, frontier=frontier, sensitivities=sens,
        seconds=time.perf_counter() - t0, candidates=cands, base_bits=base, granularity=granularity,
        units={u.name: {"kind": u.kind, "ops": list(u.ops), "weight_numel": u.weight_numel} for u in units},
        extra=extra, budget_binding=binding,
    )
    lo, hi = result.bits_range
    log.info("mixed precision (%s): %.4f MB of %.4f MB budget, %.2f average unit bits (ops at %s bits), %.1fs",
             method, result.size_mb, result.budget_mb, result.average_bits, lo if lo == hi else f"{lo}-{hi}",
             result.seconds)
    return result

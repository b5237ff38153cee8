"""Interval search for one quantized op (Liu et al. 3.2), the reference implementation.

The op's two operands (input X and weight W of a Linear, or A and B of an attention product) are
quantized with intervals Delta_A, Delta_B initialised from the maximum. The search alternates: fix
Delta_X and pick the best Delta_W among C candidates linearly spaced in [alpha*Delta_W0, beta*Delta_W0],
then fix Delta_W and do the same for Delta_X, then (optionally) correct the bias; it stops when a round
improves the objective by less than ``tol`` or after ``max_iters`` rounds. A candidate replaces the
current interval only if it strictly improves the objective, so the search never ends worse than it
started (bias correction, applied after each round as the paper does, is the one step that may).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from vitq.calibration.bias_correction import corrected_bias, expected_output_error
from vitq.calibration.objectives import RankingPairs, TargetStats, objective_sum
from vitq.nn.qops import QuantOp
from vitq.recipes import SearchSpec as MethodSpec

log = logging.getLogger(__name__)

# Output elements per evaluation chunk: bounds the temporary memory of one candidate evaluation.
CHUNK_ELEMENTS = 1 << 23


@dataclass
class OpCalibrationResult:
    name: str
    role: str
    loss_start: float | None = None
    loss_end: float | None = None
    rounds: int = 0
    history: list[float] = field(default_factory=list)
    scales: tuple[list[float], list[float]] = ((), ())


@dataclass
class OpData:
    """Calibration data of one op: operand A (activations, (N, ...)), operand B (a weight, or activations
    with leading dim N) and the float output (N, ...) computed from the same unquantized operands."""

    a: torch.Tensor
    b: torch.Tensor
    target: torch.Tensor
    b_is_weight: bool
    #: per-element weights of the output error (the Hessian objective's squared output gradients)
    out_weight: torch.Tensor | None = None


def percentile_scale(x: torch.Tensor, percentile: float, qmax: int, generator: torch.Generator) -> torch.Tensor:
    """Interval whose top code reaches the given percentile of |x| (the Percentile baseline)."""
    a = x.detach().abs().reshape(-1).float()
    if a.numel() > (1 << 24):  # kthvalue on a deterministic sample keeps memory bounded
        a = a[torch.randint(0, a.numel(), (1 << 24,), generator=generator)]
    k = max(1, min(a.numel(), int(round(percentile / 100.0 * a.numel()))))
    v = a.kthvalue(k).values
    return (v / qmax).clamp_min(1e-12)


class OpSearch:
    """Evaluates candidate intervals of one op against its float output (one instance per op)."""

    def __init__(self, op: QuantOp, data: OpData, method: MethodSpec, *, ranking_gamma: float,
                 ranking_pairs: int, ranking_margin: float, generator: torch.Generator):
        self.op, self.data, self.method = op, data, method
        self.qa, self.qb = op.quantizers()
        # How the op's output is computed from quantized operands, and its channel axis; a subclass
        # may evaluate the op in another layout (the fast search sees a patch conv as a Linear).
        self.compute, self.channel_dim = op.compute, op.channel_dim
        self.n = data.a.shape[0]
        per_sample = max(1, data.target[0].numel())
        self.chunk = max(1, CHUNK_ELEMENTS // per_sample)
        self.stats = TargetStats(data.target, method.objective or "mse")
        self.ranking = None
        if method.ranking and op.role == "attn_scores" and ranking_gamma > 0:
            self.ranking = RankingPairs.build(data.target, ranking_pairs, ranking_margin, generator)
            self.gamma = ranking_gamma
        self.has_bias = getattr(op, "bias", None) is not None and op.role in ("linear", "conv")
        if self.has_bias:
            self.bias0 = op.bias.detach().clone()

    # -- evaluation ----------------------------------------------------------------------------------
    def _rows(self):
        for start in range(0, self.n, self.chunk):
            yield slice(start, min(self.n, start + self.chunk))

    def _b_rows(self, b_q: torch.Tensor, rows: slice) -> torch.Tensor:
        return b_q if self.data.b_is_weight else b_q[rows]

    def loss(self, a_q: torch.Tensor, b_q: torch.Tensor) -> float:
        """The objective of Eq. 11 (or the method's) for already fake-quantized operands."""
        total = 0.0
        for rows in self._rows():
            out = self.compute(a_q[rows], self._b_rows(b_q, rows))
            total += objective_sum(out, self.stats, rows)
            if self.ranking is not None:
                total += self.gamma * self.ranking.loss_sum(out, rows)
        return total / self.n

    def current_loss(self) -> float:
        return self.loss(self.qa.fake_quant_with(self.data.a, self.qa.scale),
                         self.qb.fake_quant_with(self.data.b, self.qb.scale))

    # -- search --------------------------------------------------------------------------------------
    def search_operand(self, which: int, base: torch.Tensor, current_loss: float, num_candidates: int) -> float:
        """Exhaustive search of one operand's interval over ``num_candidates`` factors of ``base``."""
        q, other_q = (self.qa, self.qb) if which == 0 else (self.qb, self.qa)
        x, other = (self.data.a, self.data.b) if which == 0 else (self.data.b, self.data.a)
        other_fq = other_q.fake_quant_with(other, other_q.scale)
        best_loss, best_scale = current_loss, q.scale.clone()
        for f in torch.linspace(self.method.alpha, self.method.beta, num_candidates).tolist():
            s = base * f
            xq = q.fake_quant_with(x, s)
            loss = self.loss(xq, other_fq) if which == 0 else self.loss(other_fq, xq)
            if loss < best_loss:
                best_loss, best_scale = loss, s
        q.scale.copy_(best_scale)
        return best_loss

    def correct_bias(self) -> None:
        if not self.has_bias:
            return
        a_q = self.qa.fake_quant_with(self.data.a, self.qa.scale)
        b_q = self.qb.fake_quant_with(self.data.b, self.qb.scale)
        err = torch.zeros_like(self.bias0, dtype=torch.float64)
        for rows in self._rows():
            out = self.compute(a_q[rows], self._b_rows(b_q, rows))
            e = expected_output_error(out, self.data.target[rows], self.channel_dim)
            err += e * (rows.stop - rows.start)
        err /= self.n
        with torch.no_grad():
            self.op.bias.copy_(corrected_bias(self.bias0, self.op.bias.detach(), err))


def search_op(op: QuantOp, name: str, data: OpData, method: MethodSpec, *, num_candidates: int, max_iters: int,
              tol: float, ranking_gamma: float, ranking_pairs: int, ranking_margin: float,
              generator: torch.Generator, fast: bool = False) -> OpCalibrationResult:
    """Alternating W/X interval search (Liu et al. 3.2) with optional bias correction, in place on ``op``.

    ``fast=True`` evaluates the same objective over the same grid with
    :class:`vitq.calibration.fast_search.FastOpSearch`; ``False`` is this reference implementation.
    """
    if fast:
        from vitq.calibration.fast_search import FastOpSearch as searcher
    else:
        searcher = OpSearch
    from vitq.calibration.quantizer_search import extended_searcher

    searcher = extended_searcher(searcher, op, method, fast)  # non-uniform quantizers, Hessian objective
    s = searcher(op, data, method, ranking_gamma=ranking_gamma, ranking_pairs=ranking_pairs,
                 ranking_margin=ranking_margin, generator=generator)
    base_a, base_b = s.qa.scale.clone(), s.qb.scale.clone()
    loss = s.current_loss()
    res = OpCalibrationResult(name=name, role=op.role, loss_start=loss, history=[loss])
    for _ in range(max_iters):
        prev = loss
        loss = s.search_operand(1, base_b, loss, num_candidates)  # Delta_X fixed, search Delta_W (or Delta_B)
        loss = s.search_operand(0, base_a, loss, num_candidates)  # Delta_W fixed, search Delta_X (or Delta_A)
        if method.bias_correction and s.has_bias:
            s.correct_bias()
            loss = s.current_loss()
        res.rounds += 1
        res.history.append(loss)
        if prev - loss < tol:
            break
    res.loss_end = loss
    return res

"""The interval search of one quantized op (Liu et al. 3.2): alternating W/X rounds and bias correction.

The op's two operands (input X and weight W of a Linear, or A and B of an attention product) are
quantized with intervals Delta_A, Delta_B initialised from the maximum. The search alternates: fix
Delta_X and pick the best Delta_W among C candidates linearly spaced in [alpha*Delta_W0, beta*Delta_W0],
then fix Delta_W and do the same for Delta_X, then (optionally) correct the bias; it stops when a round
improves the objective by less than ``tol`` or after ``max_iters`` rounds. A candidate replaces the
current interval only if it strictly improves the objective, so the search never ends worse than it
started (bias correction, applied after each round as the paper does, is the one step that may).

:func:`search_op` composes three strategies, each an object chosen once per op:

- the **loss** (:func:`~vitq.calibration.search.loss.make_loss`, from ``spec.objective``): Pearson /
  cosine / MSE (+ ranking), or the Hessian-weighted output error;
- the **evaluator** of a uniform operand's candidates (:func:`make_evaluator`, from ``search``):
  ``"reference"`` evaluates every candidate directly
  (:class:`~vitq.calibration.search.reference.DirectEvaluator`); ``"fast"`` uses
  :class:`~vitq.calibration.search.fast.FastEvaluator` (moments, integer GEMMs, coarse-to-fine) when the
  loss is a similarity one, else direct evaluation walked coarse-to-fine;
- the **operand search**: an operand whose quantizer is a
  :class:`~vitq.quantizers.base.SearchableQuantizer` (two-region, log, affine, ...) is searched by the
  quantizer's own ``search``, scored by the op's loss with the other operand quantized as it stands
  and told whether the evaluator is exhaustive; a uniform operand by the evaluator.

Bias correction (Eq. 13-15): quantization shifts the mean of each output unit by
E[eps^W X] + E[eps^X W] + E[eps^X eps^W] (Eq. 15). That expected error, measured on the calibration
data, is subtracted from the layer's bias, so the mean of every output channel is preserved. It is
recomputed from the original float bias after every search round, so corrections never accumulate.
"""

from __future__ import annotations

import torch

from vitq.calibration.search.data import OpCalibrationResult, OpData
from vitq.calibration.search.fast import FastEvaluator
from vitq.calibration.search.loss import make_loss
from vitq.calibration.search.problem import OpProblem
from vitq.calibration.search.reference import DirectEvaluator
from vitq.distributed import shard_sum
from vitq.nn.qops import QuantOp
from vitq.quantizers.base import SearchableQuantizer
from vitq.quantizers.grouped import GroupedUniformQuantizer
from vitq.recipes.base import SIMILARITY_OBJECTIVES as OBJECTIVES
from vitq.recipes.base import SearchSpec

#: the evaluators ``search_op(search=...)`` can name
SEARCHES = ("fast", "reference")


def make_evaluator(search: str, op: QuantOp, data: OpData, spec: SearchSpec, loss_for) -> DirectEvaluator | FastEvaluator:
    """The evaluator ``search`` names for ``op``; ``loss_for(data)`` builds the loss strategy for the data
    layout the evaluator works in (the fast one sees a patch-embedding convolution as a Linear)."""
    if search not in SEARCHES:
        raise ValueError(f"search={search!r}: choose one of {SEARCHES}")
    if search == "fast" and spec.objective in OBJECTIVES:
        return FastEvaluator.build(op, data, loss_for)
    return DirectEvaluator(OpProblem(op, data, loss_for(data)), exhaustive=search == "reference")


def expected_output_error(out_q: torch.Tensor, out_f: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """E[O_hat - O] per output channel, averaging over every other dimension (samples, tokens, pixels)."""
    d = (out_q - out_f).double()
    dims = [i for i in range(d.dim()) if i != channel_dim % d.dim()]
    return d.mean(dim=dims)


def corrected_bias(original_bias: torch.Tensor, current_bias: torch.Tensor, mean_error_with_current: torch.Tensor) -> torch.Tensor:
    """New bias b0 - E[O_hat_nobias - O_nobias], given the mean error measured with ``current_bias`` in place."""
    error_without_bias = mean_error_with_current - (current_bias.double() - original_bias.double())
    return (original_bias.double() - error_without_bias).to(original_bias.dtype)


def correct_bias(p: OpProblem) -> None:
    """Eq. 13-15 on the op of ``p``, with the intervals in force (a no-op without a bias)."""
    if not p.has_bias:
        return
    a_q = p.qa.fake_quant_with(p.data.a, p.qa.scale)
    b_q = p.qb.fake_quant_with(p.data.b, p.qb.scale)
    err = torch.zeros_like(p.bias0, dtype=torch.float64)
    for rows, out in p.outputs(a_q, b_q):
        e = expected_output_error(out, p.data.target[rows], p.channel_dim)
        err += e * (rows.stop - rows.start)
    err = shard_sum(err) / p.n_total  # every rank's samples in a data-parallel calibration
    with torch.no_grad():
        p.op.bias.copy_(corrected_bias(p.bias0, p.op.bias.detach(), err))


def search_operand(evaluator, which: int, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
    """One operand's search (0: A / X, 1: B / W); returns the loss in force after it."""
    p = evaluator.problem
    q, _, x, _ = p.operands(which)
    if isinstance(q, GroupedUniformQuantizer):  # PTQ4ViT's per-group intervals, each group on its own
        q.search_groups(x, p.operand_group_loss(which, q.out_axis, q.groups), base, factors)
        return p.current_loss()
    if isinstance(q, SearchableQuantizer):
        return q.search(x, p.operand_loss(which), current_loss, base, factors, exhaustive=evaluator.exhaustive)
    return evaluator.search_operand(which, base, current_loss, factors)


def search_op(op: QuantOp, name: str, data: OpData, spec: SearchSpec, *, num_candidates: int, max_iters: int,
              tol: float, ranking_gamma: float, ranking_pairs: int, ranking_margin: float,
              generator: torch.Generator, search: str = "reference") -> OpCalibrationResult:
    """Alternating W/X interval search (Liu et al. 3.2) with optional bias correction, in place on ``op``.

    ``search`` names the evaluator (``"fast"`` or ``"reference"``, see the module docstring); both
    evaluate the same objective over the same ``num_candidates`` grid. The ranking loss (Eq. 10-11)
    weighs ``ranking_gamma`` and samples ``ranking_pairs`` key pairs per op from ``generator``.
    """
    def loss_for(d: OpData):
        return make_loss(spec, d, op.role, ranking_gamma=ranking_gamma, ranking_pairs=ranking_pairs,
                         ranking_margin=ranking_margin, generator=generator)

    evaluator = make_evaluator(search, op, data, spec, loss_for)
    p = evaluator.problem
    factors = spec.factors(num_candidates)
    base_a, base_b = p.qa.scale.clone(), p.qb.scale.clone()
    loss = evaluator.current_loss()
    res = OpCalibrationResult(name=name, role=op.role, loss_start=loss, history=[loss])
    rounds = max_iters if spec.rounds is None else min(spec.rounds, max_iters)
    for _ in range(rounds):
        prev = loss
        loss = search_operand(evaluator, 1, base_b, loss, factors)  # Delta_X fixed, search Delta_W (or Delta_B)
        loss = search_operand(evaluator, 0, base_a, loss, factors)  # Delta_W fixed, search Delta_X (or Delta_A)
        if spec.bias_correction and p.has_bias:
            correct_bias(p)
            loss = evaluator.current_loss()
        res.rounds += 1
        res.history.append(loss)
        if spec.rounds is None and prev - loss < tol:
            break
    res.loss_end = loss
    return res

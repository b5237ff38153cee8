"""Direct evaluation of candidate intervals: the reference search (and the plain one of other losses).

Each candidate interval of the searched operand is applied to its data (fake-quantized), the other
operand quantized as it stands, and the op's output is computed and scored by the loss strategy.
With ``exhaustive=True`` (``search="reference"``) every candidate of the grid is evaluated, the
straightforward reading of Liu et al. 3.2; with ``exhaustive=False`` (``search="fast"`` for a loss
the fast evaluator cannot take moments of, the Hessian one) the grid is walked coarse-to-fine
(:func:`vitq.quantizers.grid.walk`). A candidate replaces the current interval only if it is strictly
better.
"""

from __future__ import annotations

import torch

from vitq.calibration.search.problem import OpProblem
from vitq.quantizers.grid import best_index, walk


class DirectEvaluator:
    """Searches one uniform operand's interval of an :class:`OpProblem` by direct evaluation."""

    def __init__(self, problem: OpProblem, *, exhaustive: bool = True):
        self.problem = problem
        #: every candidate (the reference), else coarse-to-fine; also what searchable quantizers are told
        self.exhaustive = exhaustive

    def current_loss(self) -> float:
        return self.problem.current_loss()

    def search_operand(self, which: int, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
        """Best of the candidates ``base * factors[i]`` for operand ``which``; returns the loss in force."""
        q, _, x, _ = self.problem.operands(which)
        loss_fn = self.problem.operand_loss(which)
        cache = walk(len(factors), lambda idx: [loss_fn(q.fake_quant_with(x, base * factors[i])) for i in idx],
                     exhaustive=self.exhaustive)
        best = best_index(cache)
        if cache[best] < current_loss:
            q.scale.copy_(base * factors[best])
            return cache[best]
        return current_loss

"""How the op search handles quantizers other than the uniform one, and the Hessian objective.

:func:`extended_searcher` returns the op searcher class for one op. Ops whose quantizers are all
uniform, under the Pearson / cosine / MSE objectives, keep the searcher they had
(:class:`~vitq.calibration.search.OpSearch` or :class:`~vitq.calibration.fast_search.FastOpSearch`).
Otherwise :class:`ExtendedSearchMixin` is mixed in: an operand whose quantizer is a
:class:`~vitq.quantizers.base.SearchableQuantizer` is searched by the quantizer's own ``search``,
scored by the same objective, the other operand quantized as it stands; a uniform operand keeps the
base searcher's grid search. With the fast search the base is ``FastOpSearch`` (its exact moment
search of weight intervals works with any input quantizer) minus its integer-GEMM path, which
assumes uniform codes; the Hessian objective, which no fast path knows, runs on ``OpSearch``'s plain
evaluation, coarse-to-fine when the fast search is asked for. The alternating W/X rounds, bias
correction and the ranking loss are unchanged.
"""

from __future__ import annotations

from functools import cache

import torch

from vitq.calibration.fast_search import FastOpSearch
from vitq.calibration.hessian import HessianLossMixin
from vitq.calibration.search import OpSearch
from vitq.quantizers.base import SearchableQuantizer, coarse_to_fine


class ExtendedSearchMixin:
    """Operand search for ops with a non-uniform quantizer or a custom loss (see the module docstring)."""

    #: coarse-to-fine over the grid (the fast search) instead of every candidate
    fast: bool = True

    def search_operand(self, which: int, base: torch.Tensor, current_loss: float, num_candidates: int) -> float:
        q, other_q = (self.qa, self.qb) if which == 0 else (self.qb, self.qa)
        if not isinstance(q, SearchableQuantizer) and isinstance(self, FastOpSearch):
            return super().search_operand(which, base, current_loss, num_candidates)
        x, other = (self.data.a, self.data.b) if which == 0 else (self.data.b, self.data.a)
        other_fq = other_q.fake_quant_with(other, other_q.scale)
        if which == 0:
            def loss_fn(xq):
                return self.loss(xq, other_fq)
        else:
            def loss_fn(xq):
                return self.loss(other_fq, xq)
        factors = torch.linspace(self.method.alpha, self.method.beta, num_candidates).tolist()
        if isinstance(q, SearchableQuantizer):
            return q.search(x, loss_fn, current_loss, base, factors, exhaustive=not self.fast)
        best, loss = coarse_to_fine(len(factors), lambda i: loss_fn(q.fake_quant_with(x, base * factors[i])),
                                    exhaustive=not self.fast)
        if loss < current_loss:
            q.scale.copy_(base * factors[best])
            return loss
        return current_loss


class _FloatEvaluation:
    """Keeps ``FastOpSearch`` off its integer-GEMM path (uniform codes only): ``use_int`` is always False."""

    use_int = property(lambda self: False, lambda self, value: None)


@cache
def _compose(hessian: bool, fast: bool) -> type[OpSearch]:
    if hessian:
        bases = (HessianLossMixin, ExtendedSearchMixin, OpSearch)
    elif fast:
        bases = (ExtendedSearchMixin, _FloatEvaluation, FastOpSearch)
    else:
        bases = (ExtendedSearchMixin, OpSearch)
    name = ("Hessian" if hessian else "") + ("Fast" if fast else "") + "ExtendedOpSearch"
    return type(name, bases, {"fast": fast})


def extended_searcher(base: type[OpSearch], op, method, fast: bool) -> type[OpSearch]:
    """The searcher class for ``op``: ``base`` unless the op has a non-uniform quantizer or the method's
    objective is ``"hessian"``."""
    hessian = method.objective == "hessian"
    if hessian or any(isinstance(q, SearchableQuantizer) for q in op.quantizers()):
        return _compose(hessian, fast)
    return base

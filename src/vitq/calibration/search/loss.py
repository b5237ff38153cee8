"""Loss strategies: what a candidate's op output scores, as one object per op search.

An op search computes its output for a candidate pair of quantized operands in chunks of samples and
hands the chunks to its loss, :meth:`OutputLoss.mean`; the evaluators
(:mod:`~vitq.calibration.search.reference`, :mod:`~vitq.calibration.search.fast`) never look inside.

- :class:`SimilarityLoss`: Pearson (Liu et al. Eq. 12), cosine (EasyQuant) or MSE of the output against
  the float output, per calibration sample, plus gamma times the ranking loss of Eq. 10 on attention
  scores (Eq. 11). It is a function of per-sample moments of the output, so the fast evaluator may
  compute it without forming the output (``moments = True``; it then reads ``stats``, ``ranking``
  and ``gamma``).
- :class:`HessianLoss`: PTQ4ViT's Hessian-guided objective (Yuan et al. 2022). The second-order change
  of the task loss is approximated per output element by the squared output gradient (a diagonal
  Fisher / Gauss-Newton term): loss = E[ sum_j (dL/dO_j)^2 (O_hat_j - O_j)^2 ].

The labels are not available at calibration time. PTQ4ViT's code back-propagates the KL divergence
between the partly quantized model and the float predictions, whose gradient vanishes until earlier
layers are quantized. Here the gradient is that of the cross-entropy of the **float** model against its
own top-1 prediction (the empirical Fisher of the float model, whose Hessian of KL(float || model)
at the float model is the Fisher): it is nonzero for every op, computed with quantization disabled,
once per calibration unit, on the same batches the engine uses. :func:`output_grad_squares` computes
(dL/dO)^2 for the ops of one unit (the engine's preparation step stores it in ``OpData.out_weight``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.calibration.search.data import OpData
from vitq.calibration.search.objectives import RankingPairs, TargetStats, objective_sum
from vitq.errors import VitqError
from vitq.eval.metrics import logits_of
from vitq.nn.qops import quantization_disabled
from vitq.recipes.base import SIMILARITY_OBJECTIVES as OBJECTIVES
from vitq.recipes.base import SearchSpec

#: (rows of the calibration samples, the op's output on those rows)
Chunks = Iterable[tuple[slice, torch.Tensor]]


class OutputLoss:
    """Interface of the loss strategies: the mean over ``n`` samples of the per-sample loss of an output
    given in chunks of samples."""

    #: the fast evaluator may compute this loss from per-sample moments
    moments: bool = False

    def mean(self, chunks: Chunks, n: int) -> float:
        return self.sum(chunks) / n

    def sum(self, chunks: Chunks) -> float:
        """The sum over the samples of the chunks of the per-sample loss (a data-parallel search adds the
        ranks' sums, :meth:`~vitq.calibration.search.problem.OpProblem.mean_of`)."""
        raise NotImplementedError


class SimilarityLoss(OutputLoss):
    """Pearson / cosine / MSE per sample (+ gamma x ranking loss on attention scores); see the module."""

    moments = True

    def __init__(self, target: torch.Tensor, objective: str, ranking: RankingPairs | None, gamma: float):
        self.stats = TargetStats(target, objective)
        self.ranking = ranking
        self.gamma = gamma if ranking is not None else 0.0

    @property
    def objective(self) -> str:
        return self.stats.objective

    def sum(self, chunks: Chunks) -> float:
        total = 0.0
        for rows, out in chunks:
            total += objective_sum(out, self.stats, rows)
            if self.ranking is not None:
                total += self.gamma * self.ranking.loss_sum(out, rows)
        return total


class HessianLoss(OutputLoss):
    """Mean over samples of sum_j g_j^2 (O_hat_j - O_j)^2, g^2 from :func:`output_grad_squares`
    (``OpData.out_weight``)."""

    def __init__(self, data: OpData):
        w = data.out_weight
        if w is None or w.shape != data.target.shape:
            raise VitqError(f"the Hessian objective needs output gradients shaped like the op output "
                            f"{tuple(data.target.shape)}; got {None if w is None else tuple(w.shape)}")
        self.target, self.weight = data.target, w

    def sum(self, chunks: Chunks) -> float:
        total = 0.0
        for rows, out in chunks:
            d = out - self.target[rows]
            total += (d.pow(2) * self.weight[rows]).sum().item()
        return total

    def along(self, rows: slice, out: torch.Tensor, axis: int) -> torch.Tensor:
        """The sum of this chunk's weighted squared error over every axis but ``axis`` of the output
        (shape ``(out.shape[axis],)``): the error adds up over the output, so groups of output slices
        can be searched each on its own (:class:`~vitq.quantizers.grouped.GroupedUniformQuantizer`)."""
        e = (out - self.target[rows]).pow(2).mul_(self.weight[rows])
        return e.movedim(axis, 0).reshape(e.shape[axis], -1).sum(dim=1, dtype=torch.float64)


def make_loss(spec: SearchSpec, data: OpData, role: str, *, ranking_gamma: float, ranking_pairs: int,
              ranking_margin: float, generator: torch.Generator) -> OutputLoss:
    """The loss strategy ``spec.objective`` names, for an op of ``role`` with calibration ``data``. The
    ranking pairs (attention scores, ``spec.ranking``, ``ranking_gamma > 0``) are drawn from ``generator``."""
    if spec.objective == "hessian":
        return HessianLoss(data)
    if spec.objective not in OBJECTIVES:
        raise ValueError(f"objective={spec.objective!r}: nothing to search (choose one of {OBJECTIVES} or 'hessian')")
    ranking = None
    if spec.ranking and role == "attn_scores" and ranking_gamma > 0:
        ranking = RankingPairs.build(data.target, ranking_pairs, ranking_margin, generator)
    return SimilarityLoss(data.target, spec.objective, ranking, ranking_gamma)


def output_grad_squares(model: nn.Module, batches: list[torch.Tensor], forward, ops: dict[str, nn.Module]
                        ) -> dict[str, torch.Tensor]:
    """``{op name: (dL/dO)^2}`` with the shape of the op's output concatenated over ``batches`` (and over
    repeated calls within a batch, in call order), L the float model's cross-entropy to its own top-1."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in ops}
    with torch.enable_grad(), quantization_disabled(model):
        for b in batches:
            seen: dict[str, list[torch.Tensor]] = {n: [] for n in ops}
            handles = [op.register_forward_hook(lambda _m, _a, o, n=n, seen=seen: seen[n].append(o)) for n, op in ops.items()]
            try:
                x = b.detach().clone().requires_grad_(True)
                logits = logits_of(forward(model, x)).float()
            finally:
                for h in handles:
                    h.remove()
            if logits.dim() != 2:
                raise VitqError(f"the Hessian objective needs classification logits (N, classes); got {tuple(logits.shape)}")
            loss = F.cross_entropy(logits, logits.detach().argmax(dim=-1), reduction="sum")
            names = [n for n in ops for _ in seen[n]]
            tensors = [t for n in ops for t in seen[n]]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            per: dict[str, list[torch.Tensor]] = {n: [] for n in ops}
            for n, t, g in zip(names, tensors, grads):
                per[n].append(torch.zeros_like(t) if g is None else g.detach().pow(2))
            for n in ops:
                out[n].extend(per[n])
    return {n: torch.cat(v) for n, v in out.items() if v}

"""Calibration objectives, all as losses to minimise, computed per calibration sample then averaged.

- Pearson correlation Gamma between float and quantized outputs (Liu et al. Eq. 12); loss = -mean Gamma.
- cosine similarity (EasyQuant); loss = -mean cos.
- mean squared error.
- the ranking loss on attention scores (Eq. 10), combined with the similarity as in Eq. 11.

A "sample" is one index of the leading dimension (one image; one window for Swin window attention).
The loss strategies the search evaluates are built on these in :mod:`vitq.calibration.search.loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitq.distributed import shard_count, shard_sum
from vitq.quantizers.kernels import sample_moments


class TargetStats:
    """Per-sample statistics of the float output, computed once per op and reused for every candidate."""

    def __init__(self, target: torch.Tensor, objective: str):
        self.objective = objective
        t = target.reshape(target.shape[0], -1).float()
        if objective == "pearson":
            t = t - t.mean(dim=1, keepdim=True)
        self.t = t
        self.t_norm = t.norm(dim=1)


def objective_sum(out: torch.Tensor, stats: TargetStats, rows: slice) -> float:
    """Sum over the samples in ``rows`` of the per-sample loss of ``out`` (shape ``(n, ...)``).

    Written as per-sample moments (one fused pass, :func:`~vitq.quantizers.kernels.sample_moments`),
    without centred copies of ``out``: the target is centred once in :class:`TargetStats`, so
    sum((o - mean o) * t) = sum(o * t).
    """
    n = out.shape[0]
    o = out.reshape(n, -1).float()
    dot, sq, total = sample_moments(o, stats.t[rows])
    return objective_from_moments(dot, sq, total, stats, rows, o.shape[-1])


def objective_from_moments(dot: torch.Tensor, sq: torch.Tensor, total: torch.Tensor, stats: TargetStats,
                           rows: slice, numel: int) -> float:
    """:func:`objective_sum` from the per-sample moments of the output ``o`` (``numel`` elements per
    sample): ``dot = sum(o * t)`` with the (centred) target of ``stats``, ``sq = sum(o^2)``,
    ``total = sum(o)``, each of shape ``(n,)``."""
    dot, sq, total = dot.double(), sq.double(), total.double()
    if stats.objective == "mse":
        t_sq = stats.t_norm[rows].double().pow(2)
        return ((sq - 2 * dot + t_sq) / numel).sum().item()
    if stats.objective == "pearson":
        sq = sq - total.pow(2) / numel
    den = sq.clamp_min(0).sqrt() * stats.t_norm[rows].double()
    sim = torch.where(den > 0, dot / den.clamp_min(1e-300), torch.zeros_like(dot))
    return -sim.sum().item()


@dataclass
class RankingPairs:
    """Key-pair indices for the ranking loss of Eq. 10 and the float order of each pair.

    Pairs are formed inside each attention row (one query of one head): Eq. 10 sums over all
    pairs p < q of the row's w keys. To keep the cost linear in w, ``num_pairs`` pairs are drawn
    once per op, uniformly among p != q with a seeded generator, and shared by every row; ``0``
    takes all w(w-1)/2 pairs. ``sign`` is sign(A_p - A_q) of the float scores, ``scale`` the mean
    |A_p - A_q| over rows, which makes the loss and the margin theta independent of the score scale.
    """

    p: torch.Tensor
    q: torch.Tensor
    sign: torch.Tensor
    scale: float
    margin: float
    _diff: torch.Tensor | None = None

    @classmethod
    def build(cls, scores: torch.Tensor, num_pairs: int, margin: float, generator: torch.Generator) -> RankingPairs:
        w = scores.shape[-1]
        if num_pairs == 0 or num_pairs >= w * (w - 1) // 2:
            p, q = torch.triu_indices(w, w, offset=1)
        else:
            p = torch.randint(0, w, (num_pairs,), generator=generator)
            q = (p + torch.randint(1, w, (num_pairs,), generator=generator)) % w  # q != p
        d = scores[..., p] - scores[..., q]
        # float64 sum over every rank's samples: the same mean, up to summation order, on any number of ranks
        scale = shard_sum(d.abs().sum(dtype=torch.float64).item()) / shard_count(d.numel()) or 1.0
        return cls(p=p, q=q, sign=torch.sign(d), scale=scale, margin=margin)

    def pair_matrix(self, w: int, dtype: torch.dtype) -> torch.Tensor:
        """``D`` (w, pairs) with +1 at row p and -1 at row q of each pair's column: ``A @ D`` is
        A_p - A_q for every row of A at once (a GEMM is ~10x faster here than two gathers)."""
        if self._diff is None or self._diff.dtype != dtype:
            cols = torch.arange(self.p.numel())
            self._diff = torch.zeros(w, self.p.numel(), dtype=dtype)
            self._diff.index_put_((self.p, cols), torch.ones(cols.numel(), dtype=dtype), accumulate=True)
            self._diff.index_put_((self.q, cols), -torch.ones(cols.numel(), dtype=dtype), accumulate=True)
        return self._diff

    def loss_sum(self, scores_hat: torch.Tensor, rows: slice) -> float:
        """Sum over samples in ``rows`` of the per-sample mean hinge (theta - m)_+ (Eq. 10), normalised."""
        return self.hinge_sum(torch.matmul(scores_hat, self.pair_matrix(scores_hat.shape[-1], scores_hat.dtype)), rows)

    def hinge_sum(self, m: torch.Tensor, rows: slice) -> float:
        """:meth:`loss_sum` from the pair differences ``m = scores_hat @ D`` (consumed in place)."""
        m.mul_(self.sign[rows]).div_(-self.scale).add_(self.margin).clamp_(min=0)  # (theta - m)_+
        return m.reshape(m.shape[0], -1).mean(dim=1).sum().item()

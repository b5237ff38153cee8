"""Candidate losses of the attention scores Q·K^T without forming the scores.

The search of one operand interval of ``S = A @ B`` (A = Q: (n, ..., T, d), B = K^T: (n, ..., d, T2),
with d << T) holds the other operand fixed and quantized. The objective needs per sample only
sum(S * t), sum(S^2) and sum(S) (t: the float scores, centred for Pearson), and the ranking loss
of Eq. 10 needs the pair differences S @ D (D: (T2, pairs) of +1/-1). Per head:

    sum(S * t)  = <A, t B^T>            = <B, A^T t>                 (t B^T, A^T t: fixed)
    sum(S^2)    = <A^T A, B B^T>         (two d x d Gram matrices, one fixed)
    sum(S)      = (1^T A) . (B 1)
    S @ D       = A @ (B D)              (B D: d x pairs)

so a candidate costs about 2*T*d^2 multiply-adds (A^T A and A (B D)) instead of the 2*T*T2*d of
the scores and their pair GEMM: 3x less arithmetic at ViT-S shapes (T = 197, d = 64), and the
(n, heads, T, T2) scores are never written. Same objective, in another order of float32
summation; the search confirms its choice with a direct evaluation.
"""

from __future__ import annotations

import torch

from vitq.calibration.search.objectives import RankingPairs, TargetStats, objective_from_moments
from vitq.distributed import shard_sum


def _per_sample_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum(x * y) over all but the first dim, as one batched GEMV (no product tensor)."""
    n = x.shape[0]
    return torch.bmm(x.reshape(n, 1, -1), y.reshape(n, -1, 1)).view(n)


class ScoreMoments:
    """The loss of candidate quantized operands of one attention-scores op, the other operand fixed.

    Args:
        which: 0 when A (queries) is searched and ``fixed`` is the quantized B (keys^T); 1 when B is
            searched and ``fixed`` is the quantized A.
        fixed: the other operand, already quantized.
        stats: the float output's statistics (the similarity objective).
        ranking: the ranking pairs of Eq. 10, or None.
        gamma: weight of the ranking loss.
        n_total: samples on every rank of a data-parallel calibration (default: this rank's).
    """

    def __init__(self, which: int, fixed: torch.Tensor, stats: TargetStats, ranking: RankingPairs | None,
                 gamma: float = 0.0, n_total: int | None = None):
        self.which, self.stats, self.ranking, self.gamma = which, stats, ranking, gamma
        n = fixed.shape[0]
        self.n = n
        self.n_total = n if n_total is None else n_total
        self.rows = slice(0, n)
        if which == 0:
            b = fixed  # (n, ..., d, T2)
            self.t_out = b.shape[-1]
            t = stats.t.view(*b.shape[:-2], -1, self.t_out)  # (n, ..., T, T2)
            self.cross = t @ b.transpose(-1, -2)  # t B^T: (n, ..., T, d)
            self.fixed_sum = b.sum(dim=-1)  # B 1: (n, ..., d)
            self.fixed_gram = b @ b.transpose(-1, -2)  # B B^T: (n, ..., d, d)
            if ranking is not None:
                self.bd = b @ ranking.pair_matrix(self.t_out, b.dtype)  # (n, ..., d, pairs)
        else:
            a = fixed  # (n, ..., T, d)
            self.a = a
            t = stats.t.view(*a.shape[:-1], -1)  # (n, ..., T, T2)
            self.t_out = t.shape[-1]
            self.cross = a.transpose(-1, -2) @ t  # A^T t: (n, ..., d, T2)
            self.fixed_sum = a.sum(dim=-2)  # 1^T A: (n, ..., d)
            self.fixed_gram = a.transpose(-1, -2) @ a  # A^T A: (n, ..., d, d)
            if ranking is not None:
                self.d = ranking.pair_matrix(self.t_out, a.dtype)
        self.numel = stats.t.shape[1]

    def loss(self, xq: torch.Tensor) -> float:
        """Mean over samples of the objective (plus gamma * ranking loss) of the candidate operand ``xq``."""
        dot = _per_sample_dot(xq, self.cross)
        if self.which == 0:
            total = _per_sample_dot(xq.sum(dim=-2), self.fixed_sum)
            gram = xq.transpose(-1, -2) @ xq
        else:
            total = _per_sample_dot(self.fixed_sum, xq.sum(dim=-1))
            gram = xq @ xq.transpose(-1, -2)
        sq = _per_sample_dot(gram, self.fixed_gram)
        loss = objective_from_moments(dot, sq, total, self.stats, self.rows, self.numel)
        if self.ranking is not None:
            m = xq @ self.bd if self.which == 0 else self.a @ (xq @ self.d)
            loss += self.gamma * self.ranking.hinge_sum(m, self.rows)
        return shard_sum(loss) / self.n_total

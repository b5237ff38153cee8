"""Hadamard matrices, and the online Hadamard transform as an explicit module.

A Hadamard matrix H of order n has entries +-1 and H H^T = n I, so H / sqrt(n) is orthogonal. Orders
built here (:func:`hadamard_matrix`): ``n = m * 2^k`` with ``m = 1`` (Sylvester: H_2 (x) ... (x) H_2) or
``m = p + 1`` for a prime ``p = 3 (mod 4)`` (Paley's first construction, e.g. 12, 20, 24, 44, 48, 60),
as the Kronecker product H_m (x) H_(2^k). That covers ViT widths such as 192, 384 = 12 * 32,
768 = 12 * 64, 1024, 1536 = 12 * 128 and 3072. (QuaRot stores a table of hand-made H_m for m in
{12, 20, 28, 36, 40, 52, ...}; the Paley construction makes the ones with m - 1 a prime = 3 (mod 4)
without a table, and :func:`hadamard_factors` returns ``None`` for an order it cannot build, e.g. 36.)

:class:`OnlineHadamard` applies ``x -> x M`` with the orthogonal ``M = (H_m / sqrt(m)) (x) (H_p / sqrt(p))``
over the last dimension, as two small matmuls with constant matrices on ``x`` reshaped to ``(..., m, p)``
(never the dense ``n x n`` M). It exports to ONNX as ``Reshape``, ``MatMul`` with an initializer and
``Reshape``, which ONNX Runtime runs as ordinary float ops. The rotation transform (:mod:`vitq.transforms.rotation`) puts one
in front of an MLP's second Linear and folds ``M`` into that Linear's weight.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def hadamard_factors(n: int) -> tuple[int, int] | None:
    """``(m, 2^k)`` with ``m * 2^k = n`` and H_m constructible (1, or p + 1 for a prime p = 3 mod 4; the
    smallest such m), or ``None`` when this module cannot build a Hadamard matrix of order ``n``."""
    if n < 1:
        return None
    if is_pow2(n):
        return 1, n
    for m in range(4, n + 1, 4):
        if n % m == 0 and is_pow2(n // m) and _is_prime(m - 1) and (m - 1) % 4 == 3:
            return m, n // m
    return None


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _paley(q: int) -> torch.Tensor:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]  # Q_ij = chi(j - i), antisymmetric for q = 3 mod 4
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return s + torch.eye(q + 1, dtype=torch.float64)


@functools.lru_cache(maxsize=32)
def _hadamard(n: int) -> torch.Tensor:
    f = hadamard_factors(n)
    if f is None:
        raise ValueError(f"no Hadamard matrix of order {n} can be built here (orders m * 2^k with m = 1 or "
                         "m - 1 a prime = 3 mod 4)")
    m, p = f
    return _sylvester(p) if m == 1 else torch.kron(_paley(m - 1), _sylvester(p))


def hadamard_matrix(n: int, normalized: bool = True) -> torch.Tensor:
    """A Hadamard matrix of order ``n`` (float64); divided by sqrt(n) (orthogonal) when ``normalized``.

    Raises ValueError when :func:`hadamard_factors` has no construction for ``n``.
    """
    h = _hadamard(n).clone()
    return h / math.sqrt(n) if normalized else h


class OnlineHadamard(nn.Module):
    """``x -> x M`` over the last dimension, ``M = (H_m / sqrt(m)) (x) (H_p / sqrt(p))`` orthogonal.

    Runs as ``X = x.reshape(..., m, p)``; ``y = A^T X B`` with ``A = H_m / sqrt(m)``, ``B = H_p / sqrt(p)``
    (``kron(A, B)[(a, b), (c, d)] = A[a, c] B[b, d]``); with ``m = 1`` one matmul with ``B``. The matrices
    are non-persistent buffers: they follow from ``dim`` alone, so state dicts do not carry them.

    Args:
        dim: the size of the last dimension; :func:`hadamard_factors` must have a construction for it.
    """

    def __init__(self, dim: int):
        super().__init__()
        f = hadamard_factors(dim)
        if f is None:
            raise ValueError(f"OnlineHadamard: no Hadamard matrix of order {dim}")
        self.dim = dim
        self.m, self.p = f
        left = _paley(self.m - 1) / math.sqrt(self.m) if self.m > 1 else torch.ones(1, 1, dtype=torch.float64)
        self.register_buffer("left_t", left.t().contiguous().float(), persistent=False)
        self.register_buffer("right", (_sylvester(self.p) / math.sqrt(self.p)).float(), persistent=False)

    def matrix(self) -> torch.Tensor:
        """The ``dim x dim`` orthogonal matrix M this module multiplies by (float64)."""
        left = _paley(self.m - 1) / math.sqrt(self.m) if self.m > 1 else torch.ones(1, 1, dtype=torch.float64)
        return torch.kron(left, _sylvester(self.p) / math.sqrt(self.p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.m == 1:
            return torch.matmul(x, self.right.to(x.dtype))
        y = torch.matmul(x.unflatten(-1, (self.m, self.p)), self.right.to(x.dtype))
        return torch.matmul(self.left_t.to(x.dtype), y).flatten(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, factors={self.m}x{self.p}"

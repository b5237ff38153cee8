"""RMSNorm without affine parameters: what a LayerNorm becomes once its input is mean-free and its
gamma/beta are folded into the Linears it feeds (:mod:`vitq.transforms.ln_folding`).

For a mean-free x (sum_j x_j = 0) LayerNorm's variance is mean(x^2), so
``layer_norm(x, gamma, beta, eps) = x / sqrt(mean(x^2) + eps) * gamma + beta = RMSNorm(x) * gamma + beta``
exactly, eps included. Written with elementary ops (``pow``, ``mean``, ``rsqrt``) so that the TorchScript
ONNX exporter emits standard nodes at any opset vitq exports (ONNX's ``RMSNormalization`` needs opset 23).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2, -1) + eps)`` over the last dimension; no parameters.

    Args:
        dim: size of the normalised (last) dimension, for ``repr`` and checks.
        eps: added to the mean square (the replaced LayerNorm's eps).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.normalized_shape = (int(dim),)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps:g}, affine=False"

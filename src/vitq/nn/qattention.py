"""Quantized attention: the two attention products as explicit :class:`QuantMatMul` modules.

Family adapters subclass their library's attention class together with :class:`QuantAttentionMixin`,
are built from the float module with :func:`vitq.models.base.clone_as` (sharing its weights), and
write the attention once with ``self.matmul_scores`` (Q·K^T) and ``self.matmul_context`` (attn·V).
Softmax stays in float (Liu et al. 3.1).
"""

from __future__ import annotations

import torch.nn as nn

from vitq.nn.qops import OpQuantSpec, QuantMatMul


class QuantAttentionMixin:
    """Adds ``matmul_scores`` and ``matmul_context`` to an attention module."""

    matmul_scores: QuantMatMul
    matmul_context: QuantMatMul

    def _add_matmuls(self, spec: OpQuantSpec) -> None:
        assert isinstance(self, nn.Module)
        self.matmul_scores = QuantMatMul("attn_scores", spec)
        self.matmul_context = QuantMatMul("attn_context", spec)

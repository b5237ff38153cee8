"""The uniform quantizer of Eq. 8 with one interval per group, each group's interval searched on its own.

PTQ4ViT (Yuan et al. 2022; their ``quant_layers``) splits some operands into groups along one axis and
gives each group its own symmetric interval, searched independently:

- a fused qkv Linear's weight: three groups of output rows, q, k and v (``n_V=3``, ``configs/PTQ4ViT.py``);
- the patch embedding's weight: one group per output channel (``ChannelwiseBatchingQuantConv2d``);
- Q, K (operands of Q·K^T) and V (second operand of attn·V): one group per head (``n_G = heads``).

A group's interval changes only its own slice of the op's output (rows of the weight -> output
channels; a head of Q, K or V -> that head of the output), so with an output loss that adds up over
the output (PTQ4ViT's Hessian-weighted error, or the MSE) every group is searched at once: each
candidate factor is tried on all groups together and every group keeps its own best
(:meth:`GroupedUniformQuantizer.search_groups`), as the authors' code does.

    Psi(Y)_g = clamp(round(Y_g / Delta_g), -2^(b-1), 2^(b-1) - 1)      for the g-th block of ``axis``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vitq.distributed import shard_max
from vitq.errors import ConfigError
from vitq.quantizers.base import SearchableQuantizer
from vitq.quantizers.uniform import fake_quantize

GroupLossFn = Callable[[torch.Tensor], torch.Tensor]


class GroupedUniformQuantizer(SearchableQuantizer):
    """Symmetric Eq. 8 with ``groups`` intervals, one per contiguous block of ``axis``.

    Args:
        bits: bit-width b.
        axis: the operand axis split into groups (0: a weight's output rows; 1: the heads of Q, K, V
            shaped ``(B, heads, tokens, head_dim)``).
        groups: number of groups G; the axis length must be a multiple of G.
        out_axis: the axis of the op's output whose blocks a group changes (-1: a Linear's output
            features, 1: a Conv's output channels or an attention product's heads).

    Buffers: ``scale`` of shape ``(G,)``, the interval of each group.
    """

    def __init__(self, bits: int = 8, *, axis: int, groups: int, out_axis: int):
        super().__init__(bits)
        if not isinstance(groups, int) or groups < 1:
            raise ConfigError(f"groups={groups!r} must be a positive integer")
        self.axis, self.groups, self.out_axis = axis, groups, out_axis
        self.register_buffer("scale", torch.ones(groups))

    def _expand(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        n = x.shape[self.axis]
        if n % self.groups:
            raise ConfigError(f"axis {self.axis} of length {n} cannot be split into {self.groups} equal groups")
        shape = [1] * x.dim()
        shape[self.axis % x.dim()] = self.groups
        s = scale.reshape(shape)
        return s.repeat_interleave(n // self.groups, dim=self.axis % x.dim()) if n != self.groups else s

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self._expand(x, scale), self.bits)

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        """Each group's interval covers its own max|x| (over every rank's ``x`` in data-parallel calibration)."""
        g = x.detach().movedim(self.axis, 0)
        m = g.reshape(self.groups, -1).abs().amax(dim=1).float()
        self.scale.copy_((shard_max(m) / self.qmax).clamp_min(torch.finfo(torch.float32).tiny * 1e6))

    @torch.no_grad()
    def search_groups(self, x: torch.Tensor, group_loss: GroupLossFn, base: torch.Tensor,
                      factors: Sequence[float]) -> None:
        """Every group on its own: each candidate ``base * f`` is tried on all groups at once and each
        group keeps the candidate with its least loss, only if strictly below its loss now.

        ``group_loss(x_q)`` is the op's loss per group (shape ``(G,)``) with this operand replaced by
        ``x_q`` and the other operand quantized as it stands.
        """
        best_loss = group_loss(self.fake_quant_with(x, self.scale)).double()
        best = self.scale.clone()
        for f in factors:
            cand = base * f
            loss = group_loss(self.fake_quant_with(x, cand)).double()
            better = loss < best_loss
            best = torch.where(better, cand, best)
            best_loss = torch.where(better, loss, best_loss)
        self.scale.copy_(best)

    def levels(self) -> torch.Tensor:
        """Every value some group can output."""
        codes = torch.arange(self.qmin, self.qmax + 1, dtype=torch.float64)
        return torch.unique((codes[None, :] * self.scale.double()[:, None]).flatten())

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, groups={self.groups} along axis {self.axis} (output axis {self.out_axis}), "
                f"enabled={self.enabled}")

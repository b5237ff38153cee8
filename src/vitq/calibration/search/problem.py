"""One op's search problem, shared by the evaluators: its operands, quantizers, data layout and loss.

:class:`OpProblem` evaluates the loss of a pair of already quantized operands directly (the op's output,
computed in chunks of samples, scored by the loss strategy). The evaluators build on it: the reference
one for every candidate, the fast one where its cheaper paths do not apply and to confirm their picks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vitq.calibration.search.data import OpData
from vitq.calibration.search.loss import Chunks, OutputLoss
from vitq.distributed import shard_count, shard_sum
from vitq.errors import ConfigError
from vitq.nn.qops import QuantOp

# Output elements per evaluation chunk: bounds the temporary memory of one candidate evaluation.
CHUNK_ELEMENTS = 1 << 23


class OpProblem:
    """The op, its calibration data in the layout the evaluator works in, and the loss strategy.

    Args:
        op: the quantized op; its quantizers' ``scale`` buffers and its bias are what the search changes.
        data: the op's calibration data (possibly in another layout than the op's own, see ``compute``).
        loss: the loss strategy scoring an output against ``data.target``.
        compute: the op's output from its two quantized operands in ``data``'s layout (default: the op's).
        channel_dim: the output channel axis in that layout (default: the op's).
    """

    def __init__(self, op: QuantOp, data: OpData, loss: OutputLoss, *,
                 compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 channel_dim: int | None = None):
        self.op, self.data, self.loss = op, data, loss
        self.qa, self.qb = op.quantizers()
        self.compute = compute or op.compute
        self.channel_dim = op.channel_dim if channel_dim is None else channel_dim
        self.n = data.a.shape[0]
        #: samples on every rank of a data-parallel calibration (``n`` in one process): losses are means over them
        self.n_total = shard_count(self.n)
        per_sample = max(1, data.target[0].numel())
        self.chunk = max(1, CHUNK_ELEMENTS // per_sample)
        self.has_bias = getattr(op, "bias", None) is not None and op.role in ("linear", "conv")
        if self.has_bias:
            self.bias0 = op.bias.detach().clone()

    def operands(self, which: int):
        """``(q, other_q, x, other)``: the searched operand's quantizer, the other's, and their data
        (``which`` = 0: operand A, the input; 1: operand B, the weight or second input)."""
        if which == 0:
            return self.qa, self.qb, self.data.a, self.data.b
        return self.qb, self.qa, self.data.b, self.data.a

    def rows(self):
        for start in range(0, self.n, self.chunk):
            yield slice(start, min(self.n, start + self.chunk))

    def b_rows(self, b_q: torch.Tensor, rows: slice) -> torch.Tensor:
        return b_q if self.data.b_is_weight else b_q[rows]

    def outputs(self, a_q: torch.Tensor, b_q: torch.Tensor):
        """``(rows, output)`` chunks of the op's output from quantized operands."""
        for rows in self.rows():
            yield rows, self.compute(a_q[rows], self.b_rows(b_q, rows))

    def mean_of(self, chunks: Chunks) -> float:
        """The loss strategy's mean over all samples (every rank's, in a data-parallel calibration) of an
        output given in chunks of this rank's samples."""
        return shard_sum(self.loss.sum(chunks)) / self.n_total

    def loss_of(self, a_q: torch.Tensor, b_q: torch.Tensor) -> float:
        """The loss of already fake-quantized operands, by direct evaluation."""
        return self.mean_of(self.outputs(a_q, b_q))

    def current_loss(self) -> float:
        """The loss of the intervals in force, by direct evaluation."""
        return self.loss_of(self.qa.fake_quant_with(self.data.a, self.qa.scale),
                            self.qb.fake_quant_with(self.data.b, self.qb.scale))

    def operand_group_loss(self, which: int, out_axis: int, groups: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``loss_fn(x_q)`` per group: as :meth:`operand_loss`, but the loss of each of ``groups`` equal
        blocks of the output's ``out_axis`` (shape ``(groups,)``). Needs a loss that adds up over the output
        (the Hessian-weighted error); raises :class:`~vitq.errors.ConfigError` for another."""
        if not hasattr(self.loss, "along"):
            raise ConfigError(f"per-group intervals are searched each on its own, which needs an objective that "
                              f"adds up over the output ('hessian'); the op's loss is {type(self.loss).__name__}")
        _, other_q, _, other = self.operands(which)
        other_fq = other_q.fake_quant_with(other, other_q.scale)

        def loss_fn(xq: torch.Tensor) -> torch.Tensor:
            a, b = (xq, other_fq) if which == 0 else (other_fq, xq)
            total = torch.zeros(groups, dtype=torch.float64, device=xq.device)
            for rows, out in self.outputs(a, b):
                total += self.loss.along(rows, out, out_axis).view(groups, -1).sum(dim=1)
            return shard_sum(total) / self.n_total

        return loss_fn

    def operand_loss(self, which: int) -> Callable[[torch.Tensor], float]:
        """``loss_fn(x_q)``: the loss with operand ``which`` replaced by ``x_q`` and the other operand
        quantized as it stands (the form a :class:`~vitq.quantizers.base.SearchableQuantizer` takes)."""
        _, other_q, _, other = self.operands(which)
        other_fq = other_q.fake_quant_with(other, other_q.scale)
        if which == 0:
            return lambda xq: self.loss_of(xq, other_fq)
        return lambda xq: self.loss_of(other_fq, xq)

"""Quantized operators: every matrix multiplication of a ViT with both operands fake-quantized.

- :class:`QuantLinear` and :class:`QuantConv2d` (the patch embedding): weight and input quantizers.
- :class:`QuantMatMul`: the attention products Q·K^T and attn·V, both inputs quantized.

Each op exposes the same small interface that calibration uses: two operand quantizers
(``quantizers()``), and ``compute(a, b)``, the op's output from already (fake-)quantized operands.
For Linear/Conv the second operand is the weight, a constant; for MatMul both operands are activations.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.nn.registry import register_qmodule
from vitq.quantizers.uniform import UniformQuantizer


@dataclass(frozen=True)
class OpQuantSpec:
    """Bits and granularity for one op, resolved from the model config (and later a mixed-precision plan)."""

    w_bits: int = 8
    a_bits: int = 8
    per_channel_weights: bool = False


class QuantOp(nn.Module):
    """Mixin-like base: the interface calibration, mixed precision and export rely on."""

    #: "linear", "conv", "attn_scores" (Q·K^T) or "attn_context" (attn·V)
    role: str = "linear"
    #: the output dimension that indexes output channels (bias correction works per channel)
    channel_dim: int = -1

    def quantizers(self) -> tuple[UniformQuantizer, UniformQuantizer]:
        raise NotImplementedError

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_enabled(self, enabled: bool) -> None:
        for q in self.quantizers():
            q.enabled = enabled

    @property
    def quant_enabled(self) -> bool:
        return all(q.enabled for q in self.quantizers())

    #: set by :func:`vitq.freeze`: the weight already holds ``codes * scale``, so the forward skips
    #: re-quantizing it (identical output, without the per-call cost)
    weight_frozen: bool = False

    def weight_for_forward(self) -> torch.Tensor:
        return self.weight if self.weight_frozen else self.quantizers()[1](self.weight)

    def set_bits(self, a_bits: int, b_bits: int) -> None:
        """Set the bit-widths of the first operand (input / A) and the second (weight / B)."""
        qa, qb = self.quantizers()
        qa.bits, qb.bits = a_bits, b_bits

    has_weight: bool = True


def _operand_quantizers(spec: OpQuantSpec, out_channels: int) -> tuple[UniformQuantizer, UniformQuantizer]:
    weight_axis = 0 if spec.per_channel_weights else None
    return UniformQuantizer(spec.a_bits), UniformQuantizer(spec.w_bits, axis=weight_axis, num_channels=out_channels)


@register_qmodule(nn.Linear)
class QuantLinear(nn.Linear, QuantOp):
    """``y = Psi(x) Psi(W)^T + b`` (Eq. 9) with per-tensor input and per-tensor/per-channel weight intervals."""

    role = "linear"

    @classmethod
    def from_module(cls, module: nn.Linear, spec: OpQuantSpec) -> QuantLinear:
        # Built on the meta device, then given the float module's own parameters: no copy, no re-init.
        q = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        q.weight, q.bias = module.weight, module.bias
        q.input_quantizer, q.weight_quantizer = _operand_quantizers(spec, module.out_features)
        return q.to(module.weight.device)

    def quantizers(self) -> tuple[UniformQuantizer, UniformQuantizer]:
        return self.input_quantizer, self.weight_quantizer

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.linear(a, b, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_for_forward(), self.bias)


@register_qmodule(nn.Conv2d)
class QuantConv2d(nn.Conv2d, QuantOp):
    """Quantized convolution (the patch embedding W^E of Eq. 1): input and weight fake-quantized."""

    role = "conv"
    channel_dim = 1

    @classmethod
    def from_module(cls, module: nn.Conv2d, spec: OpQuantSpec) -> QuantConv2d:
        q = cls(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode, device="meta",
        )
        q.weight, q.bias = module.weight, module.bias
        q.input_quantizer, q.weight_quantizer = _operand_quantizers(spec, module.out_channels)
        return q.to(module.weight.device)

    def quantizers(self) -> tuple[UniformQuantizer, UniformQuantizer]:
        return self.input_quantizer, self.weight_quantizer

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(a, b, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_for_forward(), self.bias)


class QuantMatMul(QuantOp):
    """``Psi(A) @ Psi(B)``: an attention product made an explicit, quantizable module.

    Args:
        role: ``"attn_scores"`` for Q·K^T (the ranking loss of Eq. 10 applies to its output) or
            ``"attn_context"`` for attn·V.
    """

    has_weight = False

    def __init__(self, role: str, spec: OpQuantSpec = OpQuantSpec()):
        super().__init__()
        if role not in ("attn_scores", "attn_context"):
            raise ValueError(f"role={role!r}: expected 'attn_scores' or 'attn_context'")
        self.role = role
        self.a_quantizer = UniformQuantizer(spec.a_bits)
        self.b_quantizer = UniformQuantizer(spec.a_bits)

    def quantizers(self) -> tuple[UniformQuantizer, UniformQuantizer]:
        return self.a_quantizer, self.b_quantizer

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_quantizer(a) @ self.b_quantizer(b)

    def extra_repr(self) -> str:
        return f"role={self.role}"


def quant_ops(model: nn.Module) -> dict[str, QuantOp]:
    """All quantized ops of a model by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantOp)}


def set_quantization_enabled(model: nn.Module, enabled: bool) -> None:
    for op in quant_ops(model).values():
        op.set_enabled(enabled)


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the quantized model in float inside the block; restores each op's state on exit."""
    ops = quant_ops(model)
    state = {n: [q.enabled for q in op.quantizers()] for n, op in ops.items()}
    try:
        set_quantization_enabled(model, False)
        yield model
    finally:
        for n, op in ops.items():
            for q, e in zip(op.quantizers(), state[n]):
                q.enabled = e


def count_quant_ops(model: nn.Module) -> dict[str, int]:
    """Number of quantized ops by role (``linear``, ``conv``, ``attn_scores``, ``attn_context``)."""
    counts: dict[str, int] = {}
    for op in quant_ops(model).values():
        counts[op.role] = counts.get(op.role, 0) + 1
    return counts

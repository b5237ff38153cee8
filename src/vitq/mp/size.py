"""Exact model size of a mixed-precision plan, in bits.

The convention of :mod:`vitq.eval.size` (Liu et al. Table 1): every quantized weight costs ``numel x
bits``, every other parameter (biases, norms, embeddings, a float head) 32 bits. Sizes are integers of
bits here so that the Pareto search is exact; :meth:`SizeModel.mb` gives MB (10^6 bytes) like
:func:`vitq.eval.size.model_size_mb`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from vitq.errors import ConfigError
from vitq.mp.units import MPUnit
from vitq.nn.qops import quant_ops

BITS_PER_MB = 8_000_000


@dataclass(frozen=True)
class SizeModel:
    """Size of a model as ``fixed_bits + sum_u unit_numel[u] * bits[u]``.

    Attributes:
        float_bits: 32 x every parameter that is not a quantized weight.
        fixed_numel: weights of quantized ops outside every unit (kept at ``base_bits``).
        base_bits: the bit-width of those fixed ops.
        unit_numel: weight count of each unit, in unit order.
    """

    float_bits: int
    fixed_numel: int
    base_bits: int
    unit_numel: tuple[int, ...]

    @property
    def fixed_bits(self) -> int:
        return self.float_bits + self.fixed_numel * self.base_bits

    def bits(self, unit_bits: Sequence[int]) -> int:
        if len(unit_bits) != len(self.unit_numel):
            raise ValueError(f"{len(unit_bits)} bit-widths for {len(self.unit_numel)} units")
        return self.fixed_bits + sum(n * b for n, b in zip(self.unit_numel, unit_bits))

    def mb(self, unit_bits: Sequence[int]) -> float:
        return self.bits(unit_bits) / BITS_PER_MB

    def uniform_bits(self, bits: int) -> int:
        """Size of the uniform model: every quantized weight (fixed ops too) at ``bits``."""
        return self.float_bits + (self.fixed_numel + sum(self.unit_numel)) * bits


def build_size_model(qmodel: nn.Module, units: Sequence[MPUnit], base_bits: int) -> SizeModel:
    """The size model of ``qmodel`` (from :func:`vitq.quantize`) for these units."""
    ops = quant_ops(qmodel)
    in_unit = {n for u in units for n in u.ops}
    seen: set[int] = set()
    fixed = 0
    for name, op in ops.items():
        if op.has_weight:
            seen.add(id(op.weight))
            if name not in in_unit:
                fixed += op.weight.numel()
    float_numel = 0
    for p in qmodel.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            float_numel += p.numel()
    return SizeModel(float_bits=32 * float_numel, fixed_numel=fixed, base_bits=base_bits,
                     unit_numel=tuple(u.weight_numel for u in units))


def budget_bits(size: SizeModel, *, bits: int | None = None, budget_mb: float | None = None) -> int:
    """The size budget in bits: the uniform ``bits`` model's size, or ``budget_mb`` (MB, 10^6 bytes)."""
    if budget_mb is not None:
        if not (isinstance(budget_mb, (int, float)) and math.isfinite(budget_mb) and budget_mb > 0):
            raise ConfigError(f"budget_mb={budget_mb!r} must be a positive number of MB")
        return int(math.floor(budget_mb * BITS_PER_MB + 1e-6))
    if bits is None:
        raise ConfigError("give the budget as bits=<average bit-width> or budget_mb=<MB>")
    return size.uniform_bits(bits)

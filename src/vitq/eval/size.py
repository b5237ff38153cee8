"""Model size: quantized weights at their bit-width, everything else at 32 bits (Liu et al. Table 1's
"Size (MB)" convention: params x bits / 8)."""

from __future__ import annotations

import torch.nn as nn

from vitq.nn.qops import quant_ops


def model_size_bytes(model: nn.Module, weight_bits: dict[str, int] | None = None) -> float:
    """Bytes of the model's parameters: each quantized weight ``numel * bits / 8``, the rest ``numel * 4``.

    Args:
        weight_bits: override the bit-width per op name (to size a candidate mixed-precision plan).
    """
    seen: set[int] = set()
    total = 0.0
    for name, op in quant_ops(model).items():
        if not op.has_weight:
            continue
        bits = (weight_bits or {}).get(name, op.quantizers()[1].bits)
        total += op.weight.numel() * bits / 8
        seen.add(id(op.weight))
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * 4
    return total


def model_size_mb(model: nn.Module, weight_bits: dict[str, int] | None = None) -> float:
    """Size in MB (10^6 bytes)."""
    return model_size_bytes(model, weight_bits) / 1e6

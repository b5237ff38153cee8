"""What one op's search reads and reports: its calibration data, its result, the percentile interval."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vitq.distributed import shard_rows


@dataclass
class OpCalibrationResult:
    name: str
    role: str
    loss_start: float | None = None
    loss_end: float | None = None
    rounds: int = 0
    history: list[float] = field(default_factory=list)
    scales: tuple[list[float], list[float]] = ((), ())


@dataclass
class OpData:
    """Calibration data of one op: operand A (activations, (N, ...)), operand B (a weight, or activations
    with leading dim N) and the float output (N, ...) computed from the same unquantized operands."""

    a: torch.Tensor
    b: torch.Tensor
    target: torch.Tensor
    b_is_weight: bool
    #: per-element weights of the output error (the Hessian objective's squared output gradients)
    out_weight: torch.Tensor | None = None


def percentile_scale(x: torch.Tensor, percentile: float, qmax: int, generator: torch.Generator) -> torch.Tensor:
    """Interval whose top code reaches the given percentile of |x| (the Percentile baseline); in a
    data-parallel calibration, of every rank's samples (gathered: the single-process value, bit for bit)."""
    a = shard_rows(x.detach()).abs().reshape(-1).float()
    if a.numel() > (1 << 24):  # kthvalue on a deterministic sample keeps memory bounded
        a = a[torch.randint(0, a.numel(), (1 << 24,), generator=generator)]
    k = max(1, min(a.numel(), int(round(percentile / 100.0 * a.numel()))))
    v = a.kthvalue(k).values
    return (v / qmax).clamp_min(1e-12)

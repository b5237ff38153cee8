"""The uniform quantizer of Liu et al. (2021), Eq. 8, as functions and as a module with buffer state.

    Psi_Delta(Y) = clamp(round(Y / Delta), -2^(b-1), 2^(b-1) - 1)          (Eq. 8, signed)

``round`` is round-half-to-even (``torch.round``), the rounding of ONNX ``QuantizeLinear``, and the
division is a true division ``Y / Delta`` as ONNX specifies, so exported integer codes equal these.
The dequantized value is ``Psi_Delta(Y) * Delta`` (Eq. 9). Scales are per tensor (the paper) or per
channel along one axis (an option for weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vitq.distributed import shard_max
from vitq.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit-width (an int in 2..16) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what}={bits!r} is not valid: use an integer in {MIN_BITS}..{MAX_BITS}")
    return bits


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)``: signed ``[-2^(b-1), 2^(b-1)-1]`` (Eq. 8) or unsigned ``[0, 2^b-1]``."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class _StraightThrough(torch.autograd.Function):
    """``value`` forward, the identity gradient to ``x`` backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (exactly), with gradients flowing to ``x`` as if the map were the identity: how a
    rounding step is differentiated while reconstructing a block (:mod:`vitq.calibration.reconstruction`)."""
    return _StraightThrough.apply(x, value.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round(x)`` with the straight-through gradient."""
    return straight_through(x, torch.round(x.detach()))


def quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Integer codes of Eq. 8 as a float tensor holding integers (exact up to 2^24).

    ``scale`` broadcasts against ``x`` (a 0-d tensor, or a per-channel tensor shaped for broadcast).
    """
    qmin, qmax = qrange(bits, signed)
    return torch.clamp(torch.round(x / scale), qmin, qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Quantize then dequantize: ``Psi_Delta(x) * Delta`` (Eq. 8-9).

    Without autograd the result is computed in one buffer (one allocation instead of four); the values
    are the same as ``quantize(x, scale, bits, signed) * scale``. With autograd (``x`` or ``scale``
    requiring grad) the rounding passes gradients straight through and the clamp stops them outside
    the range, so both
    ``x`` and ``scale`` get the LSQ gradients (Esser et al. 2020); the values are the same.
    """
    if torch.is_grad_enabled() and (x.requires_grad or (isinstance(scale, torch.Tensor) and scale.requires_grad)):
        qmin, qmax = qrange(bits, signed)
        return round_ste(torch.clamp(x / scale, qmin, qmax)) * scale  # = clamp(round(.)): integer bounds
    qmin, qmax = qrange(bits, signed)
    return torch.div(x, scale).round_().clamp_(qmin, qmax).mul_(scale)


def int_dtype(bits: int, signed: bool = True) -> torch.dtype:
    """Smallest torch integer dtype that holds every code of ``bits`` bits."""
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    if bits <= 16:
        return torch.int16 if signed else torch.int32
    return torch.int32


def max_scale(x: torch.Tensor, bits: int, signed: bool = True, axis: int | None = None) -> torch.Tensor:
    """The interval that just covers ``max|x|`` (the search's starting point in Liu et al. 3.2).

    Per tensor (``axis=None``) returns a 0-d tensor; per channel returns one value per index of ``axis``.
    Zero ranges get a tiny positive interval so division stays finite.
    """
    qmin, qmax = qrange(bits, signed)
    a = x.detach().abs()
    if axis is None:
        m = a.max()
    else:
        dims = [d for d in range(a.dim()) if d != axis % a.dim()]
        m = a.amax(dim=dims)
    return (m / qmax).clamp_min(torch.finfo(torch.float32).tiny * 1e6).float()


class UniformQuantizer(nn.Module):
    """Fake-quantizes a tensor with Eq. 8; its interval lives in the ``scale`` buffer.

    Args:
        bits: bit-width b in 2..16.
        signed: signed codes (Eq. 8) or unsigned ``[0, 2^b-1]`` (for non-negative inputs, an option).
        axis: ``None`` for one interval per tensor, or the channel axis of per-channel intervals
            (e.g. 0 for a Linear weight ``(out, in)``).
        num_channels: length of the per-channel scale when ``axis`` is set.

    The quantizer is a no-op until it is ``enabled`` (after calibration or loading). The ``scale``
    buffer is what calibration searches; it saves, moves and exports with the module.
    """

    def __init__(self, bits: int = 8, signed: bool = True, axis: int | None = None, num_channels: int = 1):
        super().__init__()
        self.bits = check_bits(bits)
        self.signed = signed
        self.axis = axis
        shape = () if axis is None else (num_channels,)
        self.register_buffer("scale", torch.ones(shape))
        self.enabled = False

    # -- numerics -----------------------------------------------------------------------------------
    def broadcast_scale(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The scale reshaped to broadcast against ``x`` along this quantizer's axis."""
        s = self.scale if scale is None else scale
        if self.axis is None or s.dim() == 0:
            return s
        shape = [1] * x.dim()
        shape[self.axis % x.dim()] = -1
        return s.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return fake_quantize(x, self.broadcast_scale(x), self.bits, self.signed)

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` with a candidate ``scale`` (same shape as the buffer), ignoring ``enabled``."""
        return fake_quantize(x, self.broadcast_scale(x, scale), self.bits, self.signed)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` (Eq. 8) in the smallest integer dtype that holds them."""
        q = quantize(x, self.broadcast_scale(x), self.bits, self.signed)
        return q.to(int_dtype(self.bits, self.signed))

    def init_max(self, x: torch.Tensor) -> None:
        """Set the interval to cover ``max|x|`` (per tensor or per channel; in a data-parallel calibration,
        over every rank's ``x``: the interval is monotonic in the maximum, so the ranks' largest is exact)."""
        self.scale.copy_(shard_max(max_scale(x, self.bits, self.signed, self.axis)).reshape(self.scale.shape))

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed)[1]

    def extra_repr(self) -> str:
        gran = "per_tensor" if self.axis is None else f"per_channel(axis={self.axis})"
        return f"bits={self.bits}, signed={self.signed}, {gran}, enabled={self.enabled}"

"""The extension point for activation quantizers other than the uniform one of Eq. 8.

A :class:`SearchableQuantizer` plugs into every quantized op (in place of a
:class:`~vitq.quantizers.uniform.UniformQuantizer`) and into the calibration engine through one small
protocol, the same attributes the uniform quantizer has plus a search over its own candidates:

- ``bits`` (settable, validated), ``enabled`` (a no-op until calibrated), ``forward(x)`` (fake-quant).
- ``scale``: a buffer holding the quantizer's *main* interval, the one a clipping search scales; any
  further state (a second interval, per-channel exponents, a zero point) lives in more buffers, so
  ``state_dict``, ``.to()`` and :func:`vitq.save_quantized` see all of it.
- ``fake_quant_with(x, scale)``: fake-quantize with a candidate main interval, the rest as stored
  (the engine's weight search quantizes the other operand with it).
- ``init_max(x)``: the initial state from calibration data, without clipping.
- ``search(x, loss_fn, current_loss, base, factors, exhaustive)``: try the quantizer's own candidates,
  scored by ``loss_fn(x_q)`` (the op's calibration objective on its output), keep the best only if it
  is strictly better than ``current_loss``, and return the loss now in force.
- ``levels()``: every value the quantizer can output in its current state (tests, documentation).
- ``qmin``, ``qmax``: lowest and top code of the main interval (code that rescales ranges
  between bit-widths uses them).

The calibration search calls ``search`` wherever it would search a uniform interval
(:mod:`vitq.calibration.search.alternating`); ``exhaustive`` is true for the reference search, and
grids are walked with :func:`vitq.quantizers.grid.walk`. ONNX QDQ export accepts uniform quantizers only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from vitq.quantizers.grid import coarse_to_fine
from vitq.quantizers.uniform import check_bits, straight_through

LossFn = Callable[[torch.Tensor], float]


class SearchableQuantizer(nn.Module):
    """Base class of the non-uniform activation quantizers; see the module docstring for the protocol."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self._bits = check_bits(bits)
        self.register_buffer("scale", torch.ones(()))
        self.enabled = False

    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value: int) -> None:
        self._bits = check_bits(value)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        """Lowest integer code (0 for the unsigned codes of log and affine quantizers)."""
        return -(2 ** (self.bits - 1)) if self.qmax == 2 ** (self.bits - 1) - 1 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if torch.is_grad_enabled() and x.requires_grad:  # block reconstruction: straight-through, values unchanged
            with torch.no_grad():
                value = self.fake_quant_with(x, self.scale)
            return straight_through(x, value)
        return self.fake_quant_with(x, self.scale)

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init_max(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def levels(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def search(self, x: torch.Tensor, loss_fn: LossFn, current_loss: float, base: torch.Tensor,
               factors: Sequence[float], exhaustive: bool = False) -> float:
        """Default: the main interval over ``factors`` x ``base`` (the uniform search's grid), rest fixed."""
        best, loss = coarse_to_fine(len(factors), lambda i: loss_fn(self.fake_quant_with(x, base * factors[i])),
                                    exhaustive)
        if loss < current_loss:
            self.scale.copy_(base * factors[best])
            return loss
        return current_loss

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={self.enabled}"


class FloatPassthrough(SearchableQuantizer):
    """Leaves its operand in float: the second operand of an op whose parameter stays unquantized
    (the LayerNorm affine parameters of the fully quantized option). ``bits`` reads 32 for size
    accounting and ignores assignments."""

    @property
    def bits(self) -> int:
        return 32

    @bits.setter
    def bits(self, value: int) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x

    def init_max(self, x: torch.Tensor) -> None:
        pass

    def init_lp(self, x: torch.Tensor) -> None:
        pass

    def search(self, x, loss_fn, current_loss, base, factors, exhaustive=False) -> float:
        return current_loss

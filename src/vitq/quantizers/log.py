"""Logarithmic quantizers for non-negative inputs (post-softmax attention maps).

    q = clamp(round(-log2(x / Delta) / step), 0, 2^b - 1),   x_hat = Delta * 2^(-q * step)

and x_hat = 0 where round(-log2(x / Delta) / step) >= 2^b (underflow, and x = 0).

- :class:`Log2Quantizer` (step 1; FQ-ViT's softmax quantizer, used by the fully quantized option):
  Delta = 1 fixed, since softmax outputs lie in [0, 1]; the integer softmax output is then a shift.
- :class:`LogSqrt2Quantizer` (step 1/2, base sqrt(2); RepQ-ViT, Li et al. 2023): x_hat is computed
  as RepQ-ViT's public code does, 2^(-ceil(q/2)) * (sqrt(2) if q is odd else 1) * Delta (a shift and
  one multiplier), and Delta is chosen among RepQ-ViT's candidates, max(x) and its 0.999 / 0.9999 /
  0.99999 quantiles. The interval search scores them by the op's objective on its output, like every
  other interval in vitq; :meth:`LogSqrt2Quantizer.init_lp` is RepQ-ViT's own rule (the ``repq-vit``
  recipe): the three quantiles scored by the squared error of the input itself, max(x) only if none
  scores below 1e10 (the authors' initial value).

As in both public implementations the exact zero comes on top of the 2^b codes (2^b + 1 values);
a strictly b-bit integer form would give one of the codes up for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vitq.distributed import shard_max, shard_rows
from vitq.quantizers.affine import interp_quantile
from vitq.quantizers.base import LossFn, SearchableQuantizer

#: RepQ-ViT's Delta candidates: quantiles of the calibration activations
REPQ_QUANTILES = (0.999, 0.9999, 0.99999)
_MAX_QUANTILE_ELEMENTS = 1 << 24


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of ``x`` (on an evenly strided subsample when ``x`` is very large)."""
    flat = x.detach().reshape(-1).float()
    if flat.numel() > _MAX_QUANTILE_ELEMENTS:
        flat = flat[:: math.ceil(flat.numel() / _MAX_QUANTILE_ELEMENTS)]
    k = min(flat.numel(), max(1, math.ceil(q * flat.numel())))
    return flat.kthvalue(k).values


class LogQuantizer(SearchableQuantizer):
    """``x_hat = Delta * 2^(-q * step)`` with ``q`` in 0..2^b-1 (module docstring); ``scale`` is Delta."""

    step: float = 1.0

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def codes_unclamped(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.round(-torch.log2(x.clamp(min=0) / scale) / self.step)

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.exp2(-q * self.step) * scale

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        q = self.codes_unclamped(x, scale)
        underflow = q >= 2**self.bits
        return self.dequantize(q.clamp(0, self.qmax), scale).masked_fill_(underflow, 0.0)

    def levels(self) -> torch.Tensor:
        q = torch.arange(0, 2**self.bits, dtype=torch.float64)
        return torch.unique(torch.cat([torch.zeros(1, dtype=torch.float64), self.dequantize(q, self.scale.double())]))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, base=2^{self.step}, delta={float(self.scale):.4g}, enabled={self.enabled}"


class Log2Quantizer(LogQuantizer):
    """log2 quantizer with Delta = 1 (FQ-ViT): nothing to calibrate."""

    step = 1.0

    def init_max(self, x: torch.Tensor) -> None:
        self.scale.fill_(1.0)

    def search(self, x, loss_fn, current_loss, base, factors, exhaustive=False) -> float:
        return current_loss


class LogSqrt2Quantizer(LogQuantizer):
    """log-sqrt(2) quantizer of RepQ-ViT (module docstring)."""

    step = 0.5

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        odd = torch.remainder(q, 2) * (math.sqrt(2.0) - 1.0) + 1.0
        return torch.exp2(-torch.ceil(q / 2)) * odd * scale

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        self.scale.copy_(shard_max(x.detach().max()).clamp_min(1e-12))

    @torch.no_grad()
    def init_lp(self, x: torch.Tensor) -> None:
        """RepQ-ViT's Delta (``quant/quantizer.py``, ``LogSqrt2Quantizer.init_quantization_scale``): among the
        0.999 / 0.9999 / 0.99999 quantiles (linear interpolation), the one with the least mean squared
        error of ``x`` itself; every rank's rows in a data-parallel calibration."""
        everything = shard_rows(x).detach().float()
        best, best_err = everything.max(), 1e10
        for p in REPQ_QUANTILES:
            c = interp_quantile(everything, p)
            err = float((self.fake_quant_with(everything, c) - everything).pow(2).mean())
            if err < best_err:
                best, best_err = c, err
        self.scale.copy_(best.clamp_min(1e-12))

    @torch.no_grad()
    def search(self, x: torch.Tensor, loss_fn: LossFn, current_loss: float, base: torch.Tensor,
               factors: Sequence[float], exhaustive: bool = False) -> float:
        # statistics of every rank's samples in a data-parallel calibration (gathered for the quantiles)
        everything = shard_rows(x)
        candidates = [everything.detach().max()] + [quantile(everything, p) for p in REPQ_QUANTILES]
        del everything
        losses = [loss_fn(self.fake_quant_with(x, c.clamp_min(1e-12))) for c in candidates]
        i = min(range(len(losses)), key=losses.__getitem__)
        if losses[i] < current_loss:
            self.scale.copy_(candidates[i].clamp_min(1e-12))
            return losses[i]
        return current_loss

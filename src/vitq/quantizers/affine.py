"""Asymmetric (affine) uniform quantizer: codes in [0, 2^b - 1] with a zero point.

    x_hat = (clamp(round(x / s) + z, 0, 2^b - 1) - z) * s

RepQ-ViT (Li et al. 2023) quantizes every activation this way (per tensor) and every weight this way
per output channel; its post-LayerNorm activations are calibrated per channel, then reparameterised
to one per-tensor interval (:mod:`vitq.transforms.smoothing`). vitq's other quantizers are symmetric
(Eq. 8); this one serves the ``repq-vit`` recipe.

The authors' range rule (``quant/quantizer.py``, ``UniformQuantizer.init_quantization_scale``) is
:meth:`AffineQuantizer.init_lp`: for each candidate ``p`` in 0.999, 0.9999, 0.99999 the range is
[quantile(1 - p), quantile(p)] of the tensor (per channel: of the channel), s = range / (2^b - 1),
z = round(-min / s), and the candidate with the least mean squared error of the tensor itself wins.
"""

from __future__ import annotations

import numpy as np
import torch

from vitq.distributed import shard_max, shard_min, shard_rows
from vitq.quantizers.base import SearchableQuantizer
from vitq.quantizers.uniform import round_ste

#: RepQ-ViT's range candidates: quantiles of the tensor (or channel), as in its ``quant/quantizer.py``
REPQ_QUANTILES = (0.999, 0.9999, 0.99999)
#: ``torch.quantile``'s input limit; larger tensors take numpy's percentile, as the authors' code does
_TORCH_QUANTILE_MAX = 1 << 24


def interp_quantile(x: torch.Tensor, q: float, dim: int | None = None) -> torch.Tensor:
    """The q-quantile with linear interpolation (``torch.quantile``; numpy's percentile above its size
    limit), of the flattened ``x`` or along ``dim``."""
    x = x.detach().float()
    if x.numel() <= _TORCH_QUANTILE_MAX:
        return torch.quantile(x.reshape(-1) if dim is None else x, q, dim=dim)
    v = np.percentile(x.cpu().numpy().reshape(-1) if dim is None else x.cpu().numpy(), q * 100, axis=dim)
    return torch.as_tensor(v, dtype=torch.float32, device=x.device)


class AffineQuantizer(SearchableQuantizer):
    """Asymmetric quantizer, per tensor (``axis=None``) or per channel along ``axis`` (a weight's output
    channels: 0). Buffers: ``scale`` = s, ``zero_point`` = z, each 0-d or one per channel.

    The default search scales s with z fixed, which shrinks the range [-z s, (2^b - 1 - z) s] towards 0.
    ``z`` is an integer except after RepQ-ViT's reparameterisation, which sets the mean of the
    per-channel zero points, as the authors' code does (:mod:`vitq.transforms.smoothing`).
    """

    def __init__(self, bits: int = 8, axis: int | None = None, num_channels: int = 1):
        super().__init__(bits)
        self.axis = axis
        shape = () if axis is None else (num_channels,)
        self.scale = torch.ones(shape)  # re-registers the buffer with this shape
        self.register_buffer("zero_point", torch.zeros(shape))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def _bcast(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.axis is None or t.dim() == 0:
            return t
        shape = [1] * x.dim()
        shape[self.axis % x.dim()] = -1
        return t.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled and torch.is_grad_enabled() and self.scale.requires_grad:
            # block reconstruction learns s (LSQ, Esser et al. 2020) with z fixed: the rounding passes
            # gradients straight through, the clamp stops them outside the range; the same values
            z, s = self._bcast(x, self.zero_point), self._bcast(x, self.scale)
            return (torch.clamp(round_ste(x / s) + z, 0, self.qmax) - z) * s
        return super().forward(x)

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        z, s = self._bcast(x, self.zero_point), self._bcast(x, scale)
        return torch.div(x, s).round_().add_(z).clamp_(0, self.qmax).sub_(z).mul_(s)

    def _set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        s = ((hi - lo) / self.qmax).clamp_min(1e-12)
        self.scale.copy_(s.reshape(self.scale.shape))
        self.zero_point.copy_(torch.round(-lo / s).reshape(self.zero_point.shape))

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(channels, values)`` (per channel) or ``(1, values)`` (per tensor)."""
        if self.axis is None:
            return x.detach().float().reshape(1, -1)
        return x.detach().float().movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        """The range [min(x), max(x)], widened to contain 0 (as PyTorch's and ONNX Runtime's min/max
        observers do): the zero point is then a code in ``0..2^b-1``, 0 is exactly representable, and
        the quantizer exports as ONNX Q/DQ with that zero point (an all-positive attention map would
        otherwise get a negative one). RepQ-ViT's own rule is :meth:`init_lp`, unchanged."""
        if self.axis is None:
            lo, hi = shard_min(x.detach().min()).float(), shard_max(x.detach().max()).float()
        else:  # a weight: the same on every rank
            c = self._channels(x)
            lo, hi = c.amin(dim=1), c.amax(dim=1)
        self._set_range(lo.clamp(max=0), hi.clamp(min=0))

    @torch.no_grad()
    def init_lp(self, x: torch.Tensor) -> None:
        """RepQ-ViT's range rule (module docstring): quantile candidates scored by the squared error of
        ``x`` itself, per channel when ``axis`` is set. In a data-parallel calibration an activation's
        rows are gathered from every rank first (quantiles need every sample)."""
        c = self._channels(x if self.axis is not None else shard_rows(x))
        best_err = best_lo = best_hi = None
        for p in REPQ_QUANTILES:
            hi, lo = interp_quantile(c, p, dim=1), interp_quantile(c, 1 - p, dim=1)
            s = ((hi - lo) / self.qmax).clamp_min(1e-12)[:, None]
            z = torch.round(-lo[:, None] / s)
            err = (torch.round(c / s).add_(z).clamp_(0, self.qmax).sub_(z).mul_(s) - c).pow_(2).mean(dim=1)
            if best_err is None:
                best_err, best_lo, best_hi = err, lo, hi
            else:  # strictly better only, as the authors' ``score < best_score``
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        self._set_range(best_lo.reshape(self.scale.shape), best_hi.reshape(self.scale.shape))

    def levels(self) -> torch.Tensor:
        if self.axis is not None:
            raise NotImplementedError("levels() of a per-channel quantizer: one set per channel")
        codes = torch.arange(0, 2**self.bits, dtype=torch.float64)
        return (codes - float(self.zero_point)) * float(self.scale)

    def extra_repr(self) -> str:
        gran = "per_tensor" if self.axis is None else f"per_channel(axis={self.axis})"
        return f"bits={self.bits}, asymmetric, {gran}, enabled={self.enabled}"

"""FQ-ViT's Power-of-Two Factor (PTF) quantizer for LayerNorm inputs (Lin et al. 2022).

The residual stream entering a LayerNorm varies by orders of magnitude across channels. PTF keeps one
layer-wide interval Delta and gives channel c the interval Delta * 2^alpha_c, alpha_c in {0..K}:

    x_hat_c = Delta 2^alpha_c * clamp(round(x_c / (Delta 2^alpha_c)), -2^(b-1), 2^(b-1) - 1)

so the integer LayerNorm sees one scale and per-channel left shifts. FQ-ViT's quantizer is asymmetric
(zero point); vitq keeps its symmetric signed codes (Eq. 8) here. Initialisation follows FQ-ViT:
Delta = max_c(max|x_c|) / qmax / 2^K, and each alpha_c minimises channel c's quantization error;
calibration then searches Delta with the exponents fixed.
"""

from __future__ import annotations

import torch

from vitq.distributed import shard_count, shard_max, shard_sum
from vitq.quantizers.base import SearchableQuantizer
from vitq.quantizers.uniform import fake_quantize


class PowerOfTwoFactorQuantizer(SearchableQuantizer):
    """Per-channel power-of-two factors on one interval; channels on the last axis.

    Buffers: ``scale`` = Delta, ``exponent`` = alpha_c (float tensor of integers, one per channel).
    """

    def __init__(self, bits: int = 8, num_channels: int = 1, max_exponent: int = 3):
        super().__init__(bits)
        self.max_exponent = int(max_exponent)
        self.register_buffer("exponent", torch.zeros(num_channels))

    def channel_scales(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        return (self.scale if scale is None else scale) * torch.exp2(self.exponent)

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.channel_scales(scale), self.bits)

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        xc = x.detach().reshape(-1, x.shape[-1]).float()
        per_channel = (shard_max(xc.abs().amax(dim=0)) / self.qmax).clamp_min(1e-12)
        delta = per_channel.max() / 2**self.max_exponent
        # mean squared error per channel over every rank's rows (float64 sums: the same up to summation order)
        rows = shard_count(xc.shape[0])
        errs = torch.stack([
            shard_sum((fake_quantize(xc, delta * 2**a, self.bits) - xc).pow(2).sum(dim=0, dtype=torch.float64)) / rows
            for a in range(self.max_exponent + 1)
        ])  # (K+1, C)
        self.scale.copy_(delta)
        self.exponent.copy_(errs.argmin(dim=0).float())

    def levels(self) -> torch.Tensor:
        """Per channel: (C, 2^b) values."""
        codes = torch.arange(-(2 ** (self.bits - 1)), 2 ** (self.bits - 1), dtype=torch.float64)
        return self.channel_scales().double()[:, None] * codes[None, :]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.exponent.numel()}, K={self.max_exponent}, enabled={self.enabled}"

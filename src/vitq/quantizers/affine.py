"""Asymmetric (affine) uniform quantizer: codes in [0, 2^b - 1] with a zero point.

    x_hat = (clamp(round(x / s) + z, 0, 2^b - 1) - z) * s

RepQ-ViT (Li et al. 2023) quantizes post-LayerNorm activations this way: per channel during
calibration, then, after its scale reparameterisation (:mod:`vitq.transforms.smoothing`), per tensor.
vitq's other activation quantizers are symmetric (Eq. 8); this one serves the ``repq-vit`` recipe.
"""

from __future__ import annotations

import torch

from vitq.distributed import shard_max, shard_min
from vitq.quantizers.base import SearchableQuantizer


class AffineQuantizer(SearchableQuantizer):
    """Per-tensor asymmetric quantizer. Buffers: ``scale`` = s, ``zero_point`` = z (an integer).

    The default search scales s with z fixed, which shrinks the range [-z s, (2^b - 1 - z) s] towards 0.
    """

    def __init__(self, bits: int = 8):
        super().__init__(bits)
        self.register_buffer("zero_point", torch.zeros(()))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        z = self.zero_point
        return torch.div(x, scale).round_().add_(z).clamp_(0, self.qmax).sub_(z).mul_(scale)

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        lo, hi = shard_min(x.detach().min()).float(), shard_max(x.detach().max()).float()
        s = ((hi - lo) / self.qmax).clamp_min(1e-12)
        self.scale.copy_(s)
        self.zero_point.copy_(torch.round(-lo / s))

    def levels(self) -> torch.Tensor:
        codes = torch.arange(0, 2**self.bits, dtype=torch.float64)
        return (codes - float(self.zero_point)) * float(self.scale)

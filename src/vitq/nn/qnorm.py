"""A LayerNorm whose input is quantized: the fully quantized option (FQ-ViT's LayerNorm inputs).

Not in the swap registry (LayerNorms stay float by default); the fully quantized option of
:mod:`vitq.lifecycle.install` installs it on the LayerNorms inside calibration units. The input gets a
Power-of-Two-Factor quantizer; the affine parameters gamma, beta stay float (an integer LayerNorm
folds them into its output requantization), so the op's second operand is a
:class:`~vitq.quantizers.base.FloatPassthrough`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.nn.qops import QuantOp
from vitq.quantizers.base import FloatPassthrough
from vitq.quantizers.ptf import PowerOfTwoFactorQuantizer


class QuantLayerNorm(nn.LayerNorm, QuantOp):
    """``LayerNorm(Psi_PTF(x))``; role ``"layernorm"``. Requires elementwise affine parameters."""

    role = "layernorm"
    has_weight = True

    @classmethod
    def from_module(cls, module: nn.LayerNorm, bits: int) -> QuantLayerNorm:
        if module.weight is None:
            raise ValueError("QuantLayerNorm needs a LayerNorm with elementwise affine parameters")
        q = cls(module.normalized_shape, eps=module.eps, elementwise_affine=True,
                bias=module.bias is not None, device="meta")
        q.weight, q.bias = module.weight, module.bias
        q.input_quantizer = PowerOfTwoFactorQuantizer(bits, num_channels=module.normalized_shape[-1])
        q.weight_quantizer = FloatPassthrough()
        return q.to(module.weight.device)

    def quantizers(self):
        return self.input_quantizer, self.weight_quantizer

    def compute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(a, self.normalized_shape, b, self.bias, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(self.input_quantizer(x), self.normalized_shape, self.weight, self.bias, self.eps)

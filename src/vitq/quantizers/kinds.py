"""Activation quantizers by kind name: the names recipes and plan entries use.

``uniform`` is Eq. 8 of Liu et al.; the others plug in through :class:`~vitq.quantizers.base.SearchableQuantizer`.
"""

from __future__ import annotations

import torch.nn as nn

from vitq.quantizers.affine import AffineQuantizer
from vitq.quantizers.log import Log2Quantizer, LogSqrt2Quantizer
from vitq.quantizers.two_region import TwinUniformQuantizer, TwoRegionQuantizer
from vitq.quantizers.uniform import UniformQuantizer


def post_gelu_quantizer(kind: str, bits: int) -> nn.Module:
    """``uniform``, ``affine`` (RepQ-ViT's plain asymmetric), or the sign-split two-region quantizer
    (``optm`` searched ratio, ``ptq4vit`` fixed)."""
    if kind in ("uniform", "affine"):
        return input_quantizer(kind, bits)
    return TwoRegionQuantizer(bits, mode=kind)


def input_quantizer(kind: str, bits: int) -> nn.Module:
    """A per-tensor activation quantizer: ``uniform`` (Eq. 8, symmetric) or ``affine`` (asymmetric)."""
    return UniformQuantizer(bits) if kind == "uniform" else AffineQuantizer(bits)


def weight_quantizer(kind: str, bits: int, axis: int | None, num_channels: int) -> nn.Module:
    """A weight quantizer, per tensor (``axis=None``) or per channel: ``uniform`` (Eq. 8) or ``affine``."""
    if kind == "uniform":
        return UniformQuantizer(bits, axis=axis, num_channels=num_channels)
    return AffineQuantizer(bits, axis=axis, num_channels=num_channels)


def post_softmax_quantizer(kind: str, bits: int) -> nn.Module:
    """``uniform``, ``unsigned`` (uniform on ``0..2^b-1``), twin uniform (``optm``/``ptq4vit``), ``log2``
    (FQ-ViT) or ``log_sqrt2`` (RepQ-ViT)."""
    if kind in ("uniform", "unsigned"):
        return UniformQuantizer(bits, signed=kind == "uniform")
    if kind == "log2":
        return Log2Quantizer(bits)
    if kind == "log_sqrt2":
        return LogSqrt2Quantizer(bits)
    return TwinUniformQuantizer(bits, mode=kind)


def post_layernorm_quantizer(kind: str, bits: int) -> nn.Module:
    """``uniform`` or ``affine`` (RepQ-ViT's asymmetric quantizer, reparameterised per tensor)."""
    return UniformQuantizer(bits) if kind == "uniform" else AffineQuantizer(bits)

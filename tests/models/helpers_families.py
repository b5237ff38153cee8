"""Shared checks of the model-family tests (timm Swin, HF ViT/DeiT/DINOv2, HF Swin): tiny random models."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

import vitq
from vitq.nn.qops import quant_ops

#: W8A8 quantized logits must keep at least this SQNR against the float logits
MIN_SQNR_DB = 20.0
#: quantized model with quantization disabled vs float model, max abs difference of the logits
MAX_DISABLED_DIFF = 1e-5


def images(n: int, size: int, seed: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """10 log10(mean(ref^2) / mean((ref - out)^2))."""
    return 10.0 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30)).item()


def expected_counts(linear: int, blocks: int, conv: int = 1) -> dict[str, int]:
    return {"conv": conv, "linear": linear, "attn_scores": blocks, "attn_context": blocks}


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, out: Callable = lambda o: o) -> torch.Tensor:
    return out(model(x))


def disabled_max_diff(qmodel: nn.Module, ref: torch.Tensor, x: torch.Tensor, out: Callable = lambda o: o) -> float:
    with vitq.quantization_disabled(qmodel):
        return (logits(qmodel, x, out) - ref).abs().max().item()


def calibrated_sqnr(model: nn.Module, config: vitq.QuantConfig, calib: torch.Tensor, test: torch.Tensor,
                    out: Callable = lambda o: o) -> tuple[nn.Module, float]:
    """Quantize ``model`` with ``config``, calibrate on ``calib``, return (qmodel, SQNR of the test logits)."""
    ref = logits(model, test, out)
    q = vitq.quantize(model, config)
    vitq.calibrate(q, calib, progress=False)
    assert all(op.quant_enabled for op in quant_ops(q).values())
    return q, sqnr_db(ref, logits(q, test, out))


def scale_up_(linear: nn.Module, std: float = 0.5) -> None:
    """Re-initialise a head with larger weights so that the logits are O(1) and abs-diff checks mean something."""
    with torch.no_grad():
        linear.weight.normal_(0.0, std)
        if linear.bias is not None:
            linear.bias.normal_(0.0, 0.1)

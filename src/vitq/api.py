"""The lifecycle: ``quantize`` (swap modules) -> ``calibrate`` (search intervals) -> ``freeze``.

    qmodel = vitq.quantize(model, vitq.QuantConfig(w_bits=8, a_bits=8, method="liu2021"))
    vitq.calibrate(qmodel, calib_images)       # (N, C, H, W), preprocessed
    vitq.freeze(qmodel)                        # weights become their dequantized codes
    vitq.save_quantized(qmodel, "out/")        # safetensors + JSON, loads without pickle
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from vitq.config import QuantConfig
from vitq.data.transforms import DataConfig
from vitq.errors import VitqError
from vitq.methods.extended import install_quantizers
from vitq.models.base import get_adapter
from vitq.nn.qops import OpQuantSpec, QuantOp, quant_ops
from vitq.nn.registry import qmodule_for

log = logging.getLogger(__name__)


def default_forward(model: nn.Module, images: torch.Tensor):
    return model(images)


@dataclass
class QuantInfo:
    """What vitq knows about a quantized model; kept on it as ``model.vitq_info``."""

    config: QuantConfig
    adapter: str
    data_config: DataConfig
    model_spec: dict | None = None
    calibrated: bool = False
    frozen: bool = False
    forward: Callable[[nn.Module, torch.Tensor], object] = field(default=default_forward, repr=False)


def get_quant_info(model: nn.Module) -> QuantInfo:
    info = getattr(model, "vitq_info", None)
    if not isinstance(info, QuantInfo):
        raise VitqError("this model was not prepared by vitq.quantize(); call vitq.quantize(model, config) first")
    return info


def _swap(module: nn.Module, prefix: str, spec: OpQuantSpec, skip: set[str]) -> int:
    count = 0
    for name, child in list(module.named_children()):
        full = f"{prefix}{name}"
        if full in skip:
            continue
        qcls = qmodule_for(child)
        if qcls is not None:
            child = qcls.from_module(child, spec)
            setattr(module, name, child)
            count += 1
        count += _swap(child, full + ".", spec, skip)
    return count


def quantize(model: nn.Module, config: QuantConfig | None = None, *, inplace: bool = False) -> nn.Module:
    """Prepare a float model for quantization: swap every Linear, the patch-embedding Conv and every
    attention module for its quantized counterpart (quantizers disabled until calibrated).

    Args:
        model: a supported vision transformer (see :func:`vitq.models.base.adapters`).
        config: bits, method and options; defaults to W8A8 with the Liu et al. method.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The quantized model. With quantization disabled it computes exactly what the float model does.
    """
    config = config or QuantConfig()
    adapter = get_adapter(model)
    spec_source = getattr(model, "vitq_model_spec", None)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    skip = set() if config.quantize_head else set(adapter.head_names(model))
    spec = OpQuantSpec(w_bits=config.w_bits, a_bits=config.a_bits, per_channel_weights=config.per_channel_weights)
    n = _swap(model, "", spec, skip)
    for name, op in quant_ops(model).items():
        w_bits, a_bits = config.bits_for(name)
        op.set_bits(a_bits, w_bits if op.has_weight else a_bits)
    data_config = getattr(model, "vitq_data_config", None) or adapter.data_config(model)
    # the recipe's non-uniform quantizers and fully quantized LayerNorms (vitq.methods.extended)
    install_quantizers(model, config, adapter, data_config)
    model.vitq_info = QuantInfo(config=config, adapter=adapter.name, data_config=data_config, model_spec=spec_source)
    log.info("quantize: %s adapter swapped %d modules; %d quantized ops", adapter.name, n, len(quant_ops(model)))
    return model


def set_quantization_enabled(model: nn.Module, enabled: bool) -> None:
    for op in quant_ops(model).values():
        op.set_enabled(enabled)


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the quantized model in float inside the block; restores each op's state on exit."""
    ops = quant_ops(model)
    state = {n: [q.enabled for q in op.quantizers()] for n, op in ops.items()}
    try:
        set_quantization_enabled(model, False)
        yield model
    finally:
        for n, op in ops.items():
            for q, e in zip(op.quantizers(), state[n]):
                q.enabled = e


@torch.no_grad()
def freeze(model: nn.Module) -> nn.Module:
    """Bake the weight quantization: every quantized weight becomes ``codes * scale`` (exactly representable).

    Fake-quantizing a frozen weight again returns it unchanged, so outputs do not move; the model is
    set to eval mode with gradients off.
    """
    info = get_quant_info(model)
    for name, op in quant_ops(model).items():
        if not op.quant_enabled:
            raise VitqError(f"op {name} is not calibrated; run vitq.calibrate(model, images) before freeze")
        if op.has_weight:
            op.weight.copy_(op.weight_quantizer(op.weight))
            op.weight_frozen = True
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    info.frozen = True
    return model


def count_quant_ops(model: nn.Module) -> dict[str, int]:
    """Number of quantized ops by role (``linear``, ``conv``, ``attn_scores``, ``attn_context``)."""
    counts: dict[str, int] = {}
    for op in quant_ops(model).values():
        counts[op.role] = counts.get(op.role, 0) + 1
    return counts


__all__ = [
    "QuantInfo", "QuantOp", "count_quant_ops", "freeze", "get_quant_info", "quantization_disabled",
    "quantize", "set_quantization_enabled",
]

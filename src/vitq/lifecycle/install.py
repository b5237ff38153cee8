"""Put a recipe's quantizers on a freshly swapped model: each activation role gets the kind its
effective recipe names (:class:`vitq.recipes.Quantizers`), then each plan entry's ``input_quantizer``.

First the recipe's default kinds (``inputs``: every activation operand; ``weights``: every Linear / Conv
weight), then the role kinds over them. Where: post-GELU and post-LayerNorm Linears are found by data flow (:mod:`vitq.transforms.tracing`),
post-softmax maps are the first operand of every ``attn_context`` matmul, LayerNorm inputs (the fully
quantized option) those of every LayerNorm inside a calibration unit.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from vitq.config import INPUT_QUANTIZERS, QuantConfig
from vitq.errors import ConfigError, UnsupportedModelError
from vitq.nn.qnorm import QuantLayerNorm
from vitq.nn.qops import QuantConv2d, QuantLinear, QuantMatMul, quant_ops
from vitq.quantizers.kinds import (
    input_quantizer,
    post_gelu_quantizer,
    post_layernorm_quantizer,
    post_softmax_quantizer,
    weight_quantizer,
)
from vitq.recipes import Recipe
from vitq.transforms.tracing import gelu_types, trace_consumers

log = logging.getLogger(__name__)


def _in_units(name: str, units: list[str]) -> bool:
    return any(name == u or name.startswith(u + ".") for u in units)


def _set_input_quantizer(op, q: nn.Module, device) -> None:
    if isinstance(op, QuantMatMul):
        op.a_quantizer = q.to(device)
    else:
        op.input_quantizer = q.to(device)


@torch.no_grad()
def install_quantizers(model: nn.Module, config: QuantConfig, recipe: Recipe, adapter, data_config) -> dict[str, int]:
    """Install the recipe's non-uniform quantizers and the plan's per-op kinds (in place).

    Returns the number installed per kind. Raises :class:`UnsupportedModelError` when the model has no
    place for a quantizer the recipe needs (e.g. OPT-m without GELU -> Linear), naming recipe and model.
    """
    q = recipe.quantizers
    counts: dict[str, int] = {}
    mods = dict(model.named_modules())
    device = next(model.parameters()).device
    what = type(model).__name__
    counts.update(_install_defaults(model, recipe, device))
    needs_trace = q.post_gelu != "uniform" or recipe.transforms or q.post_layernorm != "uniform"
    if needs_trace:
        example = torch.randn(1, *data_config.input_size, generator=torch.Generator().manual_seed(0)).to(device)

        def trace(producer):
            return trace_consumers(model, lambda: model(example), producer, lambda m: isinstance(m, QuantLinear))

    if q.post_gelu != "uniform":
        gelus = gelu_types()
        targets = [li for ls in trace(lambda m: isinstance(m, gelus)).values() for li in ls]
        if not targets:
            raise UnsupportedModelError(f"recipe {recipe.name!r}: post-GELU quantizer {q.post_gelu!r} needs a GELU "
                                        f"module of {what} that feeds a quantized Linear directly; there is none")
        for li in targets:
            _set_input_quantizer(mods[li], post_gelu_quantizer(q.post_gelu, mods[li].input_quantizer.bits), device)
        counts[f"post_gelu:{q.post_gelu}"] = len(targets)
    if recipe.transforms or q.post_layernorm != "uniform":
        groups = trace(lambda m: isinstance(m, nn.LayerNorm))
        if not groups:
            raise UnsupportedModelError(f"recipe {recipe.name!r} ({recipe.smoothing or q.post_layernorm}): no "
                                        f"LayerNorm of {what} feeds a quantized Linear directly, so there is "
                                        "nothing to fold into")
        if q.post_layernorm != "uniform":
            for li in (li for ls in groups.values() for li in ls):
                op = mods[li]
                _set_input_quantizer(op, post_layernorm_quantizer(q.post_layernorm, op.input_quantizer.bits), device)
        counts[f"smoothing:{recipe.smoothing}"] = sum(len(ls) for ls in groups.values())
    if q.post_softmax != "uniform":
        ctx = [op for op in mods.values() if isinstance(op, QuantMatMul) and op.role == "attn_context"]
        for op in ctx:
            _set_input_quantizer(op, post_softmax_quantizer(q.post_softmax, op.a_quantizer.bits), device)
        counts[f"post_softmax:{q.post_softmax}"] = len(ctx)
    if q.layernorm_input:
        units = [u for u, _ in adapter.calibration_units(model)]
        n = 0
        for name, m in list(model.named_modules()):
            if type(m) is not QuantLayerNorm and isinstance(m, nn.LayerNorm) and m.weight is not None \
                    and _in_units(name, units):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr,
                        QuantLayerNorm.from_module(m, config.bits_for(name)[1]))
                n += 1
        counts["layernorm_input:ptf"] = n
    counts.update(_install_plan_kinds(model, config, device))
    if counts:
        log.info("recipe %s: installed %s", recipe.name, counts)
    return counts


def _install_defaults(model: nn.Module, recipe: Recipe, device) -> dict[str, int]:
    """The recipe's ``inputs`` kind on every activation operand (both operands of an attention product)
    and its ``weights`` kind on every Linear / Conv weight, where they are not the uniform quantizer."""
    q = recipe.quantizers
    counts: dict[str, int] = {}
    for op in quant_ops(model).values():
        if not isinstance(op, (QuantLinear, QuantConv2d, QuantMatMul)):  # e.g. the fully quantized LayerNorm
            continue
        if q.inputs != "uniform":
            _set_input_quantizer(op, input_quantizer(q.inputs, op.quantizers()[0].bits), device)
            if isinstance(op, QuantMatMul):
                op.b_quantizer = input_quantizer(q.inputs, op.b_quantizer.bits).to(device)
            counts[f"inputs:{q.inputs}"] = counts.get(f"inputs:{q.inputs}", 0) + 1
        if q.weights != "uniform" and op.has_weight:
            old = op.weight_quantizer
            op.weight_quantizer = weight_quantizer(q.weights, old.bits, old.axis, old.scale.numel()).to(device)
            counts[f"weights:{q.weights}"] = counts.get(f"weights:{q.weights}", 0) + 1
    return counts


def _install_plan_kinds(model: nn.Module, config: QuantConfig, device) -> dict[str, int]:
    """Each plan entry's ``input_quantizer`` on the ops it matches (overriding the recipe's kind)."""
    counts: dict[str, int] = {}
    for name, op in quant_ops(model).items():
        key, opts = config.plan_entry(name)
        kind = opts.input_quantizer
        if kind is None:
            continue
        if kind not in INPUT_QUANTIZERS.get(op.role, ()):
            raise ConfigError(f"plan[{key!r}].input_quantizer={kind!r} does not apply to op {name} (role {op.role}); "
                              f"choose one of {', '.join(INPUT_QUANTIZERS.get(op.role, ()))}")
        bits = op.quantizers()[0].bits
        make = post_softmax_quantizer if op.role == "attn_context" else post_gelu_quantizer
        _set_input_quantizer(op, make(kind, bits), device)
        counts[f"plan:{kind}"] = counts.get(f"plan:{kind}", 0) + 1
    return counts

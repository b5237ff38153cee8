"""Put a recipe's quantizers on a freshly swapped model: each activation role gets the kind its
effective recipe names (:class:`vitq.recipes.Quantizers`), then each plan entry's ``input_quantizer``.

First the recipe's default kinds (``inputs``: every activation operand; ``weights``: every Linear / Conv
weight), then the role kinds over them. Where: post-GELU and post-LayerNorm Linears are found by data flow (:mod:`vitq.transforms.tracing`),
post-softmax maps are the first operand of every ``attn_context`` matmul, LayerNorm inputs (the fully
quantized option) those of every LayerNorm inside a calibration unit.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.nn as nn

from vitq.config import INPUT_QUANTIZERS, QuantConfig
from vitq.errors import ConfigError, UnsupportedModelError
from vitq.nn.qnorm import QuantLayerNorm
from vitq.nn.qops import QuantConv2d, QuantLinear, QuantMatMul, quant_ops
from vitq.quantizers.base import FloatPassthrough
from vitq.quantizers.grouped import GroupedUniformQuantizer
from vitq.quantizers.kinds import (
    input_quantizer,
    post_gelu_quantizer,
    post_layernorm_quantizer,
    post_softmax_quantizer,
    weight_quantizer,
)
from vitq.quantizers.uniform import UniformQuantizer
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
    example = torch.randn(1, *data_config.input_size, generator=torch.Generator().manual_seed(0)).to(device)
    needs_trace = q.post_gelu != "uniform" or recipe.transforms or q.post_layernorm != "uniform"
    if needs_trace:

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
    if q.grouped:
        counts.update(_install_groups(model, recipe, device, lambda: model(example)))
    counts.update(_install_plan_kinds(model, config, device))
    if counts:
        log.info("recipe %s: installed %s", recipe.name, counts)
    return counts


def _install_defaults(model: nn.Module, recipe: Recipe, device) -> dict[str, int]:
    """The recipe's ``inputs`` kind on every activation operand (both operands of an attention product)
    and its ``weights`` kind on every Linear / Conv weight, where they are not the uniform quantizer."""
    q = recipe.quantizers
    counts: Counter[str] = Counter()
    for op in quant_ops(model).values():
        if not isinstance(op, (QuantLinear, QuantConv2d, QuantMatMul)):  # e.g. the fully quantized LayerNorm
            continue
        if q.inputs != "uniform":
            _set_input_quantizer(op, input_quantizer(q.inputs, op.quantizers()[0].bits), device)
            if isinstance(op, QuantMatMul):
                op.b_quantizer = input_quantizer(q.inputs, op.b_quantizer.bits).to(device)
            counts[f"inputs:{q.inputs}"] += 1
        if recipe.float_conv_input and isinstance(op, QuantConv2d):  # PTQ4ViT: only the weight is quantized
            op.input_quantizer = FloatPassthrough().to(device)
            counts["conv_input:float"] += 1
        if q.weights != "uniform" and op.has_weight:
            old = op.weight_quantizer
            op.weight_quantizer = weight_quantizer(q.weights, old.bits, old.axis, old.scale.numel()).to(device)
            counts[f"weights:{q.weights}"] += 1
    return counts


def _install_groups(model: nn.Module, recipe: Recipe, device, run) -> dict[str, int]:
    """PTQ4ViT's per-group intervals (:class:`~vitq.quantizers.grouped.GroupedUniformQuantizer`): Conv
    weights per output channel, a fused qkv Linear's weight per q/k/v block, Q, K, V per head.

    The heads and the fused qkv Linears are found from one forward's shapes, not from names: an attention
    product's operands are ``(B, heads, tokens, head_dim)``, and a fused qkv Linear is a Linear of the
    module that holds Q·K^T whose output is 3 x heads x head_dim wide.
    """
    q = recipe.quantizers
    ops = quant_ops(model)
    counts: Counter[str] = Counter()

    def grouped(bits: int, axis: int, groups: int, out_axis: int) -> GroupedUniformQuantizer:
        return GroupedUniformQuantizer(bits, axis=axis, groups=groups, out_axis=out_axis).to(device)

    if q.conv_weight_channels:
        for op in ops.values():
            if isinstance(op, QuantConv2d) and type(op.weight_quantizer) is UniformQuantizer:
                op.weight_quantizer = grouped(op.weight_quantizer.bits, 0, op.out_channels, 1)
                counts["weights:per_channel_searched"] += 1
    if not (q.qkv_weight_blocks or q.attention_heads):
        return counts
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    matmuls = {n: op for n, op in ops.items() if isinstance(op, QuantMatMul)}

    def record(name: str):
        def hook(_m, args) -> None:
            shapes.setdefault(name, (args[0].shape, args[1].shape))
        return hook

    handles = [op.register_forward_pre_hook(record(n)) for n, op in matmuls.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    for name, op in matmuls.items():
        if name not in shapes:
            continue
        a_shape, b_shape = shapes[name]
        if len(a_shape) != 4 or len(b_shape) != 4:
            raise UnsupportedModelError(f"recipe {recipe.name!r}: per-head intervals need attention operands shaped "
                                        f"(batch, heads, tokens, head_dim); {name} has {tuple(a_shape)}, "
                                        f"{tuple(b_shape)}")
        heads = b_shape[1]
        if q.attention_heads:
            if op.role == "attn_scores":  # Q and K^T
                op.a_quantizer = grouped(op.a_quantizer.bits, 1, a_shape[1], 1)
            op.b_quantizer = grouped(op.b_quantizer.bits, 1, heads, 1)  # K^T, or V of attn·V
            counts["inputs:per_head"] += 2 if op.role == "attn_scores" else 1
        if q.qkv_weight_blocks and op.role == "attn_scores":
            width = 3 * a_shape[1] * a_shape[-1]
            parent = name.rpartition(".")[0]
            for li, lin in ops.items():
                if (isinstance(lin, QuantLinear) and li.rpartition(".")[0] == parent and lin.out_features == width
                        and type(lin.weight_quantizer) is UniformQuantizer):
                    if lin.weight_quantizer.axis is not None:  # per-channel weights: finer than q/k/v blocks
                        log.info("%s: per-channel weights kept (finer than PTQ4ViT's q/k/v blocks)", li)
                        continue
                    lin.weight_quantizer = grouped(lin.weight_quantizer.bits, 0, 3, -1)
                    counts["weights:qkv_blocks"] += 1
    return counts


def _install_plan_kinds(model: nn.Module, config: QuantConfig, device) -> dict[str, int]:
    """Each plan entry's ``input_quantizer`` on the ops it matches (overriding the recipe's kind)."""
    counts: Counter[str] = Counter()
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
        counts[f"plan:{kind}"] += 1
    return counts

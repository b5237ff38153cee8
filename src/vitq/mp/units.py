"""Mixed-precision units: the groups of quantized ops that share one bit-width.

Liu et al. (2021) Sec. 3.3 give one bit-width to all operations of an MSA module (qkv, Q·K^T,
attn·V, proj) and one to all operations of an MLP module (fc1, fc2), weights and inputs alike
(``granularity="module"``). ``granularity="op"`` makes every quantized op of a block its own unit.

Ops are grouped structurally: the ops inside a block's quantized attention module form its MSA unit,
the block's other ops its MLP unit (no name matching, so it works for every adapter family). Ops of
calibration units without an attention module (patch embedding, Swin patch merging, a quantized head)
keep the base bit-width by default; ``include_other=True`` makes each of them a unit too (our option,
not the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from vitq.errors import ConfigError
from vitq.nn.qops import QuantOp, quant_ops

GRANULARITIES = ("module", "op")


@dataclass(frozen=True)
class MPUnit:
    """One searchable group of ops.

    Attributes:
        name: ``"<block>.msa"``, ``"<block>.mlp"``, an op name (``granularity="op"``), or a calibration unit name.
        kind: ``"msa"``, ``"mlp"``, ``"op"`` or ``"other"``.
        ops: qualified names of its quantized ops, in call order.
        weight_numel: number of weight parameters whose storage bits the unit decides (0 for matmul-only units).
        feature_op: the op whose feature enters Eq. 17: for ``msa`` the attn·V op, whose (quantized) first
            operand is the attention map A; otherwise the op whose output is the feature O.
        block: name of the calibration unit (transformer block) that contains the ops.
    """

    name: str
    kind: str
    ops: tuple[str, ...]
    weight_numel: int
    feature_op: str
    block: str

    @property
    def uses_attention_map(self) -> bool:
        return self.kind == "msa"


def op_call_order(model: nn.Module, example: torch.Tensor, forward=None) -> list[str]:
    """Names of the quantized ops in the order one forward pass calls them (first call counts)."""
    ops = quant_ops(model)
    order: list[str] = []
    seen: set[str] = set()

    def make_hook(name: str):
        def hook(_m, _a, _o):
            if name not in seen:
                seen.add(name)
                order.append(name)
        return hook

    handles = [op.register_forward_hook(make_hook(n)) for n, op in ops.items()]
    try:
        with torch.no_grad():
            (forward or (lambda m, x: m(x)))(model, example)
    finally:
        for h in handles:
            h.remove()
    # Ops the forward never calls (should not happen with a supported adapter) keep module order, last.
    return order + [n for n in ops if n not in seen]


def _numel(ops: dict[str, QuantOp], names) -> int:
    return sum(ops[n].weight.numel() for n in names if ops[n].has_weight)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def find_units(qmodel: nn.Module, example: torch.Tensor, granularity: str = "module",
               include_other: bool = False) -> tuple[list[MPUnit], list[str]]:
    """Group a quantized model's ops into mixed-precision units.

    Args:
        qmodel: a model prepared by :func:`vitq.quantize`.
        example: one preprocessed image batch ``(B, C, H, W)`` (B=1 suffices), to learn the call order.
        granularity: ``"module"`` (MSA / MLP per block, the paper) or ``"op"`` (each op).
        include_other: also make units of ops outside transformer blocks (patch embedding, patch merging, head).

    Returns:
        ``(units, fixed_ops)``: units in forward order, and the op names that keep the base bit-width.
    """
    from vitq.info import get_quant_info
    from vitq.models.base import adapter_by_name

    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity={granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    info = get_quant_info(qmodel)
    adapter = adapter_by_name(info.adapter)
    ops = quant_ops(qmodel)
    order = {n: i for i, n in enumerate(op_call_order(qmodel, example, info.forward))}
    attn_names = [n for n, _ in adapter.attention_modules(qmodel)]
    units: list[MPUnit] = []
    fixed: list[str] = []
    for block, _module in adapter.calibration_units(qmodel):
        members = sorted((n for n in ops if _under(n, block)), key=order.__getitem__)
        if not members:
            continue
        attns = [a for a in attn_names if _under(a, block)]
        if not attns:
            if not include_other:
                fixed += members
            elif granularity == "op":
                units += [MPUnit(n, "other", (n,), _numel(ops, [n]), n, block) for n in members]
            else:
                units.append(MPUnit(block, "other", tuple(members), _numel(ops, members), members[-1], block))
            continue
        if granularity == "op":
            units += [MPUnit(n, "op", (n,), _numel(ops, [n]), n, block) for n in members]
            continue
        msa = [n for n in members if any(_under(n, a) for a in attns)]
        mlp = [n for n in members if n not in msa]
        context = [n for n in msa if ops[n].role == "attn_context"]
        units.append(MPUnit(f"{block}.msa", "msa", tuple(msa), _numel(ops, msa), context[-1] if context else msa[-1],
                            block))
        if mlp:
            units.append(MPUnit(f"{block}.mlp", "mlp", tuple(mlp), _numel(ops, mlp), mlp[-1], block))
    if not units:
        raise ConfigError("this model has no mixed-precision units (no quantized transformer blocks)")
    units.sort(key=lambda u: order[u.ops[0]])
    return units, fixed

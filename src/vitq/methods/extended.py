"""Recipes beyond the uniform quantizer: MPTQ-ViT (SQ-b, OPT-m, fully quantized), PTQ4ViT, RepQ-ViT.

Each recipe of :mod:`vitq.methods.recipes` says how intervals are searched; this table says which
quantizer sits where and which function-preserving transform runs before calibration. Config flags
compose with any recipe (``--method liu2021 --sqb --optm``); a flag overrides the recipe's choice.

==============  ==============  ===========  ==============  ================  ==================
method          smoothing       post-GELU    post-softmax    LayerNorm input   search (recipes)
==============  ==============  ===========  ==============  ================  ==================
mptq            SQ-b            OPT-m        uniform         -                 liu2021's
mptq-sqb        SQ-b            uniform      uniform         -                 liu2021's
mptq-optm       -               OPT-m        uniform         -                 liu2021's
ptq4vit         -               twin (sign)  twin uniform    -                 Hessian, [0.01, 1.2]
repq-vit        RepQ reparam.   uniform      log-sqrt(2)     -                 output MSE
==============  ==============  ===========  ==============  ================  ==================

Flags: ``sqb`` (SQ-b; ``sqb_shift=False`` gives plain SmoothQuant), ``smoothquant_alpha`` (fixed
alpha instead of the search), ``sqb_proj`` (also smooth attention proj through V), ``optm`` (OPT-m on
fc2 inputs), ``optm_softmax`` (OPT-m's two-region search on attention maps), ``fully_quantized``
(LayerNorm inputs with power-of-two factors, softmax outputs with log2, as FQ-ViT).

Where: post-GELU Linears and post-LayerNorm Linears are found by data flow
(:mod:`vitq.transforms.tracing`), post-softmax maps are the first operand of every ``attn_context``
matmul. Quantizers are chosen in :func:`vitq.quantize` (so :func:`vitq.load_quantized` rebuilds them);
smoothing runs in :func:`vitq.calibrate`, unit by unit, before the unit's ops are calibrated.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from vitq.errors import ConfigError, UnsupportedModelError

if TYPE_CHECKING:
    from vitq.config import QuantConfig

log = logging.getLogger(__name__)

SMOOTHING = (None, "sqb", "smoothquant", "repq")
POST_GELU = ("uniform", "optm", "ptq4vit")
POST_SOFTMAX = ("uniform", "optm", "ptq4vit", "log2", "log_sqrt2")


@dataclass(frozen=True)
class QuantizerChoices:
    """Which quantizer and transform each activation class gets (see the module table)."""

    smoothing: str | None = None
    post_gelu: str = "uniform"
    post_softmax: str = "uniform"
    layernorm_input: bool = False

    @property
    def is_plain(self) -> bool:
        return self == QuantizerChoices()


RECIPE_CHOICES: dict[str, QuantizerChoices] = {
    "mptq": QuantizerChoices(smoothing="sqb", post_gelu="optm"),
    "mptq-sqb": QuantizerChoices(smoothing="sqb"),
    "mptq-optm": QuantizerChoices(post_gelu="optm"),
    "ptq4vit": QuantizerChoices(post_gelu="ptq4vit", post_softmax="ptq4vit"),
    "repq-vit": QuantizerChoices(smoothing="repq", post_softmax="log_sqrt2"),
}


def resolve_choices(config: QuantConfig) -> QuantizerChoices:
    """The recipe's choices with the config's flags applied; raises :class:`ConfigError` on conflicts."""
    c = RECIPE_CHOICES.get(config.method, QuantizerChoices())
    if config.sqb:
        if c.smoothing == "repq":
            raise ConfigError(f"sqb=True conflicts with method={config.method!r}, which already reparameterises "
                              "the LayerNorm outputs; use one of them")
        c = replace(c, smoothing="sqb" if config.sqb_shift else "smoothquant")
    elif c.smoothing == "sqb" and not config.sqb_shift:
        c = replace(c, smoothing="smoothquant")
    if config.optm:
        c = replace(c, post_gelu="optm")
    if config.optm_softmax:
        c = replace(c, post_softmax="optm")
    if config.fully_quantized:
        c = replace(c, layernorm_input=True, post_softmax="log2" if c.post_softmax == "uniform" else c.post_softmax)
    if c.smoothing not in ("sqb", "smoothquant") and (config.sqb_proj or config.smoothquant_alpha is not None):
        raise ConfigError("sqb_proj and smoothquant_alpha apply to SQ-b / SmoothQuant: set sqb=True "
                          "or use method 'mptq' / 'mptq-sqb'")
    return c


def recipe_flags(config: QuantConfig) -> dict:
    """Bench-row fields describing the extended choices (empty for plain uniform recipes)."""
    c = resolve_choices(config)
    if c.is_plain:
        return {}
    d = {k: v for k, v in asdict(c).items() if k != "layernorm_input" and v not in (None, "uniform")}
    if c.layernorm_input:
        d["fully_quantized"] = True  # a key field of the results schema
    if c.smoothing in ("sqb", "smoothquant"):
        d["smoothquant_alpha"] = config.smoothquant_alpha if config.smoothquant_alpha is not None else "search"
        if config.sqb_proj:
            d["sqb_proj"] = True
    return d


# -- installing the quantizers (called by vitq.quantize) --------------------------------------------------
def _post_gelu_quantizer(kind: str, bits: int):
    from vitq.quantizers.two_region import TwoRegionQuantizer

    return TwoRegionQuantizer(bits, mode=kind)


def _post_softmax_quantizer(kind: str, bits: int):
    from vitq.quantizers.log import Log2Quantizer, LogSqrt2Quantizer
    from vitq.quantizers.two_region import TwinUniformQuantizer

    if kind == "log2":
        return Log2Quantizer(bits)
    if kind == "log_sqrt2":
        return LogSqrt2Quantizer(bits)
    return TwinUniformQuantizer(bits, mode=kind)


def _in_units(name: str, units: list[str]) -> bool:
    return any(name == u or name.startswith(u + ".") for u in units)


@torch.no_grad()
def install_quantizers(model: nn.Module, config: QuantConfig, adapter, data_config) -> dict[str, int]:
    """Put the recipe's quantizers on a model just swapped by :func:`vitq.quantize` (in place).

    Returns the number of quantizers installed per kind. Raises :class:`UnsupportedModelError` when the
    model has no place for a requested one (e.g. OPT-m without GELU -> Linear).
    """
    from vitq.nn.qnorm import QuantLayerNorm
    from vitq.nn.qops import QuantLinear, QuantMatMul
    from vitq.quantizers.affine import AffineQuantizer
    from vitq.transforms.tracing import gelu_types, trace_consumers

    c = resolve_choices(config)
    counts: dict[str, int] = {}
    if c.is_plain:
        return counts
    mods = dict(model.named_modules())
    example = torch.randn(1, *data_config.input_size, generator=torch.Generator().manual_seed(0))
    example = example.to(next(model.parameters()).device)
    what = type(model).__name__

    def trace(producer):
        return trace_consumers(model, lambda: model(example), producer, lambda m: isinstance(m, QuantLinear))

    if c.post_gelu != "uniform":
        gelus = gelu_types()
        targets = [li for ls in trace(lambda m: isinstance(m, gelus)).values() for li in ls]
        if not targets:
            raise UnsupportedModelError(f"post-GELU quantizer {c.post_gelu!r}: no GELU module of {what} feeds a "
                                        "quantized Linear directly")
        for li in targets:
            op = mods[li]
            op.input_quantizer = _post_gelu_quantizer(c.post_gelu, op.input_quantizer.bits).to(example.device)
        counts[f"post_gelu:{c.post_gelu}"] = len(targets)
    if c.smoothing is not None:
        groups = trace(lambda m: isinstance(m, nn.LayerNorm))
        if not groups:
            raise UnsupportedModelError(f"{c.smoothing}: no LayerNorm of {what} feeds a quantized Linear directly, "
                                        "so there is nothing to fold into")
        if c.smoothing == "repq":
            for li in (li for ls in groups.values() for li in ls):
                op = mods[li]
                op.input_quantizer = AffineQuantizer(op.input_quantizer.bits).to(example.device)
        counts[f"smoothing:{c.smoothing}"] = sum(len(ls) for ls in groups.values())
    if c.post_softmax != "uniform":
        ctx = [op for op in mods.values() if isinstance(op, QuantMatMul) and op.role == "attn_context"]
        for op in ctx:
            op.a_quantizer = _post_softmax_quantizer(c.post_softmax, op.a_quantizer.bits).to(example.device)
        counts[f"post_softmax:{c.post_softmax}"] = len(ctx)
    if c.layernorm_input:
        units = [u for u, _ in adapter.calibration_units(model)]
        n = 0
        for name, m in list(model.named_modules()):
            if type(m) is not QuantLayerNorm and isinstance(m, nn.LayerNorm) and m.weight is not None \
                    and _in_units(name, units):
                parent, _, attr = name.rpartition(".")
                q = QuantLayerNorm.from_module(m, config.bits_for(name)[1])
                setattr(model.get_submodule(parent) if parent else model, attr, q)
                n += 1
        counts["layernorm_input:ptf"] = n
    log.info("recipe %s: installed %s", config.method, counts)
    return counts

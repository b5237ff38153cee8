"""The stages of post-training quantization, each a small named object.

    Rotate -> SwapModules -> InstallQuantizers -> Calibrate -> Freeze

``vitq.quantize`` runs the first three (``Rotate`` does nothing unless the recipe rotates),
``vitq.calibrate`` the fourth (the recipe's per-unit transforms, interval search and bias correction,
:mod:`vitq.calibration.engine`), ``vitq.freeze`` the last; :func:`vitq.pipeline` runs all five in order.
A stage reads and updates one :class:`PipelineState`; progress bars and reports name it by ``Stage.name``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from vitq.calibration.engine import CalibrationReport, calibrate
from vitq.config import QuantConfig
from vitq.errors import (
    ConfigError,
    NonFiniteError,
    PartialQuantizationError,
    PartialQuantizationWarning,
    VitqError,
)
from vitq.info import QuantInfo, default_forward, get_quant_info
from vitq.lifecycle.install import install_quantizers
from vitq.models.base import get_adapter
from vitq.models.census import take_census
from vitq.models.generic import (
    attention_hosts,
    example_images,
    install_capture,
    partition_units,
    spec_factory,
)
from vitq.nn import qmha  # noqa: F401 (registers nn.MultiheadAttention's swap)
from vitq.nn.qops import OpQuantSpec, QuantMatMul, quant_ops
from vitq.nn.registry import qmodule_for
from vitq.recipes import Recipe

log = logging.getLogger(__name__)


@dataclass
class PipelineState:
    """What flows through the stages: the model (float in, quantized out), the config and its effective
    recipe, the calibration images and what each stage reports."""

    model: nn.Module
    config: QuantConfig
    recipe: Recipe
    calib: object = None
    progress: bool = True
    inplace: bool = False
    report: CalibrationReport | None = None
    notes: dict = field(default_factory=dict)
    #: ``model`` is already the pipeline's own copy (a stage before ``SwapModules`` made it)
    owns_model: bool = False
    #: where calibration saves its state after each unit, to resume after a crash (``calibrate(checkpoint=)``)
    checkpoint: object = None
    #: an op vitq cannot quantize is an error (:class:`~vitq.errors.PartialQuantizationError`), not a warning
    strict: bool = False


class Stage:
    name: str = "stage"

    def run(self, state: PipelineState) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _swap(module: nn.Module, prefix: str, config: QuantConfig, recipe: Recipe, skip: set[str]) -> int:
    count = 0
    for name, child in list(module.named_children()):
        full = f"{prefix}{name}"
        if full in skip:
            continue
        qcls = qmodule_for(child)
        if qcls is not None:
            w_bits, a_bits = config.bits_for(full)
            spec = OpQuantSpec(w_bits=w_bits, a_bits=a_bits, per_channel_weights=config.per_channel_for(full, recipe))
            child = qcls.from_module(child, spec)
            setattr(module, name, child)
            count += 1
        count += _swap(child, full + ".", config, recipe, skip)
    return count


def _float_by_plan(model: nn.Module, config: QuantConfig) -> set[str]:
    """Modules a plan entry keeps in float (``enabled: false``)."""
    return {n for n, m in model.named_modules() if n and qmodule_for(m) is not None
            and config.plan_entry(n)[1].enabled is False}


@torch.no_grad()
def check_finite_tensors(model: nn.Module, what: str = "the float model") -> None:
    """Every floating-point parameter and buffer of ``model`` must be finite; else :class:`NonFiniteError`
    naming the first bad tensor (e.g. ``head.weight``) and how many NaN / inf values it holds."""
    tensors = [("parameter", n, t) for n, t in model.named_parameters()]
    tensors += [("buffer", n, t) for n, t in model.named_buffers()]
    for kind, name, t in tensors:
        if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all()):
            continue
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise NonFiniteError(f"{what} has non-finite values in {kind} {name}: {n_nan} NaN and {n_inf} inf of "
                             f"{t.numel()}; quantizing it would give a meaningless model (check the checkpoint)")


class Rotate(Stage):
    """Fold the LayerNorms and rotate the residual stream of the float model when the recipe says so
    (:func:`vitq.transforms.rotation.rotate_model`, seeded by ``config.seed``), on the pipeline's own copy
    unless ``inplace``. Raises :class:`~vitq.errors.UnsupportedModelError` naming the recipe and the module
    for a model it cannot rotate, before anything is quantized or calibrated."""

    name = "rotate"

    def run(self, state: PipelineState) -> None:
        mode = state.recipe.rotation
        if mode is None:
            return
        from vitq.transforms.rotation import rotate_model

        model = state.model
        if not (state.inplace or state.owns_model):
            model = copy.deepcopy(model)
        rec = rotate_model(model, mode, seed=state.config.seed,
                           who=f"recipe {state.recipe.name!r} (rotation {mode!r})")
        state.model, state.owns_model = model, True
        state.notes["rotation"] = rec.to_dict()


class SwapModules(Stage):
    """Swap every Linear, the patch-embedding Conv and every attention module for its quantized
    counterpart (registry :mod:`vitq.nn.registry`, adapters :mod:`vitq.models`); set per-op bits and
    granularity from the config and its plan. Quantizers stay disabled until calibrated.

    Raises :class:`NonFiniteError` naming the tensor if a parameter or buffer of the float model holds NaN
    or inf."""

    name = "swap"

    def run(self, state: PipelineState) -> None:
        config, recipe = state.config, state.recipe
        model = state.model
        adapter = get_adapter(model)
        check_finite_tensors(model)
        spec_source = getattr(model, "vitq_model_spec", None)
        if not (state.inplace or state.owns_model):
            model = copy.deepcopy(model)
        model.eval()
        data_config = getattr(model, "vitq_data_config", None) or adapter.data_config(model)
        example = example_images(data_config)
        float_census = take_census(model, default_forward, example)  # before any swap: what the model computes
        heads = set() if recipe.quantize_head else set(adapter.head_names(model))
        if not config.quantize_backbone:
            heads |= set(adapter.backbone_names(model))
        kept_float = _float_by_plan(model, config)
        skip = heads | kept_float | (set(float_census.unused) if adapter.skip_unused else set())
        n = _swap(model, "", config, recipe, skip)
        captured = {}
        if adapter.captures:
            hosts = [h for h in attention_hosts(float_census.attn_float) if not _in_any(h, skip)]
            captured = install_capture(model, hosts, spec_factory(config, recipe), data_config)
            n += len(captured)
        ops = quant_ops(model)
        for name, op in ops.items():
            key, opts = config.plan_entry(name)
            if opts.enabled is False and isinstance(op, QuantMatMul):
                raise ConfigError(f"plan[{key!r}].enabled=false: op {name} is an attention product, which "
                                  "cannot be left in float by a plan entry; only Linear and Conv layers can")
            w_bits, a_bits = config.bits_for(name)
            if opts.a_bits is None:  # a recipe's fixed Conv input bits (RepQ-ViT: 8); a plan's a_bits wins
                a_bits = recipe.input_bits(op.role, a_bits)
            op.set_bits(a_bits, w_bits if op.has_weight else a_bits)
        unmatched = [k for k in config.plan if not any(config.plan_entry(n)[0] == k for n in [*ops, *kept_float])]
        if unmatched:
            raise ConfigError(f"plan keys {unmatched} match no quantized op of {type(model).__name__} "
                              f"(ops are named like {', '.join(list(ops)[:3])}, ...)")
        units = partition_units(model, data_config) if adapter.captures else None
        coverage = _coverage(take_census(model, default_forward, example), heads | kept_float)
        model.vitq_info = QuantInfo(config=config, adapter=adapter.name, data_config=data_config,
                                    model_spec=spec_source, units=units, coverage=coverage, forward=adapter.forward)
        state.model = model
        state.notes.update(adapter=adapter.name, swapped=n, float_by_plan=sorted(kept_float), coverage=coverage,
                           captured=captured)
        log.info("quantize: %s adapter swapped %d modules; %d quantized ops; %s", adapter.name, n, len(ops),
                 coverage_line(coverage))
        _check_coverage(model, coverage, state.strict)


def _in_any(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _coverage(census, kept: set[str]) -> dict:
    """:attr:`QuantInfo.coverage` from the census of the swapped model: counts, and each float op either kept
    float on purpose (the head, a plan entry) or ``uncaptured``."""
    out: dict = census.counts()
    floats = census.float_ops()
    out["kept_float"] = [f for f in floats if _in_any(f.split(":", 1)[0], kept)]
    out["uncaptured"] = [f for f in floats if f not in out["kept_float"]]
    return out


def coverage_line(coverage: dict) -> str:
    """``"linear 48/49, conv 1/1, attention products 24/24 quantized"``."""
    parts = [f"{label} {coverage[k]['quantized']}/{coverage[k]['total']}"
             for k, label in (("linear", "linear"), ("conv", "conv"), ("attn_matmul", "attention products"))
             if k in coverage]
    return ", ".join(parts) + " quantized"


def _check_coverage(model: nn.Module, coverage: dict, strict: bool) -> None:
    bad = coverage.get("uncaptured") or []
    if not bad:
        return
    msg = (f"{type(model).__name__}: vitq cannot quantize {len(bad)} op(s), they stay float: {'; '.join(bad[:8])}"
           f"{' ...' if len(bad) > 8 else ''} ({coverage_line(coverage)})")
    if strict:
        raise PartialQuantizationError(msg + "; without strict they would stay float with a warning")
    warnings.warn(msg, PartialQuantizationWarning, stacklevel=3)
    log.warning(msg)


class InstallQuantizers(Stage):
    """The recipe's quantizer kind at each activation role, and each plan entry's kind
    (:mod:`vitq.lifecycle.install`)."""

    name = "quantizers"

    def run(self, state: PipelineState) -> None:
        info = get_quant_info(state.model)
        from vitq.models.base import adapter_by_name

        state.notes["quantizers"] = install_quantizers(state.model, state.config, state.recipe,
                                                       adapter_by_name(info.adapter), info.data_config)


class Calibrate(Stage):
    """The recipe's per-unit transforms, interval search and bias correction, unit by unit
    (:func:`vitq.calibration.engine.calibrate`)."""

    name = "calibrate"

    def run(self, state: PipelineState) -> None:
        if state.calib is None:
            raise VitqError("the calibrate stage needs calibration images")
        state.report = calibrate(state.model, state.calib, progress=state.progress, checkpoint=state.checkpoint)


class Freeze(Stage):
    """Bake the weight quantization: every quantized weight becomes ``codes * scale``."""

    name = "freeze"

    @torch.no_grad()
    def run(self, state: PipelineState) -> None:
        model = state.model
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


#: the whole pipeline, in order
STAGES: tuple[Stage, ...] = (Rotate(), SwapModules(), InstallQuantizers(), Calibrate(), Freeze())

"""The lifecycle: ``quantize`` (rotate if the recipe says so, swap modules, install the recipe's quantizers) -> ``calibrate`` (the
recipe's transforms and interval search, unit by unit) -> ``freeze``; :func:`pipeline` runs it all.

    qmodel = vitq.quantize(model, vitq.QuantConfig(w_bits=8, a_bits=8, method="liu2021"))
    vitq.calibrate(qmodel, calib_images)       # (N, C, H, W), preprocessed
    vitq.freeze(qmodel)                        # weights become their dequantized codes

or in one call: ``result = vitq.pipeline(model, config, calib_images)`` (``result.model``, ``result.report``).
The stages are :data:`vitq.lifecycle.stages.STAGES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.nn as nn

from vitq.calibration.engine import CalibrationReport, calibrate
from vitq.config import QuantConfig
from vitq.info import QuantInfo, get_quant_info
from vitq.lifecycle.stages import (
    STAGES,
    Calibrate,
    Freeze,
    InstallQuantizers,
    PipelineState,
    Rotate,
    Stage,
    SwapModules,
)

log = logging.getLogger(__name__)


def _run(stages, state: PipelineState) -> PipelineState:
    for stage in stages:
        log.debug("stage %s", stage.name)
        stage.run(state)
    return state


def quantize(model: nn.Module, config: QuantConfig | None = None, *, inplace: bool = False,
             strict: bool = False) -> nn.Module:
    """Prepare a float model for quantization: fold its LayerNorms and rotate its residual stream if the
    recipe rotates (:class:`Rotate`), swap every Linear, the patch-embedding Conv and every attention
    module for its quantized counterpart and install the recipe's quantizers (disabled until calibrated).

    Args:
        model: a supported vision transformer (see :func:`vitq.models.base.adapters`).
        config: bits, method and options; defaults to W8A8 with the Liu et al. method.
        inplace: modify ``model`` itself instead of a deep copy.
        strict: an op vitq cannot quantize (an attention product it cannot capture, a Linear used outside its
            module) raises :class:`~vitq.errors.PartialQuantizationError`; by default it stays float with a
            :class:`~vitq.errors.PartialQuantizationWarning` naming it. ``get_quant_info(q).coverage`` has
            the counts either way.

    Returns:
        The quantized model. With quantization disabled it computes exactly what the float model does
        (a rotated model up to float rounding).
    """
    config = config or QuantConfig()
    state = PipelineState(model=model, config=config, recipe=config.recipe(), inplace=inplace, strict=strict)
    return _run((Rotate(), SwapModules(), InstallQuantizers()), state).model


def freeze(model: nn.Module) -> nn.Module:
    """Bake the weight quantization: every quantized weight becomes ``codes * scale`` (exactly representable).

    Fake-quantizing a frozen weight again returns it unchanged, so outputs do not move; the model is
    set to eval mode with gradients off.
    """
    info = get_quant_info(model)
    Freeze().run(PipelineState(model=model, config=info.config, recipe=info.recipe))
    return model


@dataclass
class QuantizedModel:
    """What :func:`pipeline` returns: the frozen quantized model and its calibration report."""

    model: nn.Module
    report: CalibrationReport

    @property
    def info(self) -> QuantInfo:
        return get_quant_info(self.model)


def pipeline(model: nn.Module, config: QuantConfig | None = None, calib_images=None, *,
             progress: bool = True, checkpoint=None, strict: bool = False) -> QuantizedModel:
    """Quantize, calibrate and freeze a copy of ``model`` on ``calib_images`` in one call: the stages of
    :data:`STAGES` in order (the same as ``quantize`` + ``calibrate`` + ``freeze``). ``checkpoint``: as
    :func:`calibrate`'s (a directory where calibration saves its state after each unit, to resume); ``strict``:
    as :func:`quantize`'s."""
    config = config or QuantConfig()
    state = PipelineState(model=model, config=config, recipe=config.recipe(), calib=calib_images, progress=progress,
                          checkpoint=checkpoint, strict=strict)
    _run(STAGES, state)
    return QuantizedModel(model=state.model, report=state.report)


__all__ = ["STAGES", "Calibrate", "Freeze", "InstallQuantizers", "PipelineState", "QuantizedModel", "Rotate", "Stage",
           "SwapModules", "calibrate", "freeze", "pipeline", "quantize"]

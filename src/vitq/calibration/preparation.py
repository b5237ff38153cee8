"""Recipe work the calibration engine runs before each unit's ops are calibrated.

- Smoothing (SQ-b, SmoothQuant, RepQ-ViT's reparameterisation; RepQ-ViT then sets the per-tensor
  input interval of each reparameterised Linear, :meth:`UnitPreparation.after_init`): fold per-channel factors of each
  LayerNorm output into the LayerNorm and the Linears it feeds, chosen on the unit's own calibration
  inputs (produced by the already quantized units before it), so the ops are then calibrated on the
  smoothed activations (:func:`vitq.transforms.smoothing.smooth_unit`).
- The Hessian objective (PTQ4ViT): squared output gradients of the unit's ops, attached to each op's
  calibration data (:func:`vitq.calibration.search.loss.output_grad_squares`).

Recipes that need neither get no :class:`UnitPreparation` and the engine runs as before.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from vitq.calibration.search.data import OpData
from vitq.calibration.search.loss import output_grad_squares
from vitq.distributed import shard_batches
from vitq.nn.qops import QuantOp
from vitq.transforms.smoothing import SmoothingRecord, smooth_unit

log = logging.getLogger(__name__)


class UnitPreparation:
    """Built by :meth:`build`; the engine calls :meth:`before_unit` then :meth:`update_op_data` per op."""

    def __init__(self, model: nn.Module, config, smoothing: str | None, hessian: bool,
                 batches: list[torch.Tensor], forward):
        self.model, self.config, self.smoothing, self.hessian = model, config, smoothing, hessian
        self.batches, self.forward = batches, forward
        self.records: list[SmoothingRecord] = []
        self._weights: dict[str, torch.Tensor] = {}
        self.hessian_ops: set[str] = set()
        #: RepQ-ViT: op name -> the per-tensor ``(scale, zero_point)`` of its reparameterised input
        self.intervals: dict[str, tuple[float, float]] = {}

    @classmethod
    def build(cls, model: nn.Module, config, recipe, searches: dict, batches: list[torch.Tensor],
              forward) -> UnitPreparation | None:
        """``recipe`` is the effective recipe, ``searches`` each op's search spec."""
        smoothing = recipe.smoothing
        hessian = any(s.objective == "hessian" for s in searches.values())
        if smoothing is None and not hessian:
            return None
        prep = cls(model, config, smoothing, hessian, batches, forward)
        prep.hessian_ops = {n for n, s in searches.items() if s.objective == "hessian"}
        return prep

    def before_unit(self, name: str, unit: nn.Module, inputs, unit_ops: dict[str, QuantOp]) -> None:
        if self.smoothing is not None:
            # the factors are statistics of all the images: a data-parallel calibration folds on every
            # rank's inputs (gathered; the same tensors as one process, so the same factors bit for bit)
            recs = smooth_unit(unit, shard_batches(inputs), self.smoothing, alpha=self.config.smoothquant_alpha,
                               value_rows=self.config.sqb_proj, is_quantized=lambda m: isinstance(m, QuantOp))
            for r in recs:
                r.norm = f"{name}.{r.norm}"
                log.debug("%s: %s -> %s%s", r.mode, r.norm, r.linears, "" if r.alpha is None else f", alpha={r.alpha}")
            self.records += recs
            self.intervals.update({f"{name}.{li}": r.interval for r in recs if r.interval is not None
                                   for li in r.linears})
            if recs:
                log.info("%s: %s folded into %d LayerNorm/attention groups%s", name, self.smoothing, len(recs),
                         "" if recs[0].alpha is None else f" (alpha {[r.alpha for r in recs]})")
        if self.hessian:
            self._weights = output_grad_squares(self.model, self.batches, self.forward, unit_ops)

    def after_init(self, name: str, op: QuantOp) -> None:
        """After the op's intervals are initialised: RepQ-ViT sets the input interval of a Linear it
        reparameterised to s~ = mean(s_j), z~ = mean(z_j) of the per-channel intervals (its
        ``test_quant.py``), instead of one calibrated on the reparameterised input."""
        interval = self.intervals.pop(name, None)
        qa = op.quantizers()[0]
        if interval is None:
            return
        if not hasattr(qa, "zero_point") or qa.scale.dim() != 0:
            log.debug("%s: input quantizer %s is not per-tensor affine; RepQ interval not set", name, type(qa).__name__)
            return
        qa.scale.fill_(interval[0])
        qa.zero_point.fill_(interval[1])

    def update_op_data(self, name: str, data: OpData) -> None:
        weights = self._weights.pop(name, None)
        if name in self.hessian_ops:
            data.out_weight = weights

"""What vitq knows about a quantized model, in one place: :class:`QuantInfo` (``model.vitq_info``).

Saving, loading, ONNX export, reports and benchmarks read the model's metadata from here
(:meth:`QuantInfo.to_meta` / :meth:`QuantInfo.from_meta`), never gather it themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from vitq.config import QuantConfig
from vitq.data.transforms import DataConfig
from vitq.errors import VitqError


def default_forward(model: nn.Module, images: torch.Tensor):
    return model(images)


@dataclass
class QuantInfo:
    """Metadata of a model prepared by :func:`vitq.quantize`.

    Attributes:
        config: the config it was quantized with (the method's effective recipe: ``config.recipe()``).
        adapter: name of the model family adapter.
        data_config: input size and normalisation the model expects.
        model_spec: how to rebuild the float model (``{"spec": ..., "kwargs": ..., "checkpoint": ...}``),
            ``None`` for a custom module.
        calibrated, frozen: lifecycle state.
        calibration: summary of the last calibration (method, images, seconds), empty before it.
        units: the calibration units the generic adapter found (``None`` for a family adapter).
        coverage: what the model computes and how much of it is quantized (:mod:`vitq.models.census`):
            per kind the total and quantized count, the ops kept float on purpose (head, plan) and those
            vitq could not quantize (``uncaptured``).
        forward: how a batch of images runs through the model (calibration and evaluation use it).
    """

    config: QuantConfig
    adapter: str
    data_config: DataConfig
    model_spec: dict | None = None
    calibrated: bool = False
    frozen: bool = False
    calibration: dict = field(default_factory=dict)
    forward: Callable[[nn.Module, torch.Tensor], object] = field(default=default_forward, repr=False)
    #: calibration units found by the generic adapter (``None``: the family adapter names them)
    units: list[str] | None = None
    #: ``{"linear" | "conv" | "attn_matmul": {"total", "quantized"}, "kept_float": [...], "uncaptured": [...]}``
    coverage: dict = field(default_factory=dict)

    @property
    def recipe(self):
        return self.config.recipe()

    def to_meta(self) -> dict:
        """The JSON-able metadata every saved format records."""
        return {
            "adapter": self.adapter,
            "model_spec": self.model_spec,
            "config": self.config.to_dict(),
            "data_config": self.data_config.to_dict(),
            "calibrated": self.calibrated,
            "frozen": self.frozen,
            "calibration": self.calibration,
            "coverage": self.coverage,
        }

    def update_from_meta(self, meta: dict) -> None:
        """Restore the state fields of :meth:`to_meta` (the config and adapter are rebuilt by quantize)."""
        self.calibrated, self.frozen = bool(meta["calibrated"]), bool(meta["frozen"])
        self.data_config = DataConfig.from_dict(meta["data_config"])
        self.model_spec = meta.get("model_spec")
        self.calibration = dict(meta.get("calibration") or {})


def get_quant_info(model: nn.Module) -> QuantInfo:
    info = getattr(model, "vitq_info", None)
    if not isinstance(info, QuantInfo):
        raise VitqError("this model was not prepared by vitq.quantize(); call vitq.quantize(model, config) first")
    return info

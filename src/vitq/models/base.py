"""Model adapters: what vitq needs to know about one family of vision transformers.

An adapter says whether it handles a model (by the classes of its modules, never by name substrings),
which module classes become quantized attention modules (registered in :mod:`vitq.nn.registry`), which
modules form the calibration units in forward order, which modules are the classification head, and
what input the model expects. Adapters register with :func:`register_adapter`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vitq.data.transforms import DataConfig
from vitq.errors import UnsupportedModelError
from vitq.nn.registry import clone_as  # noqa: F401  (re-exported: adapters build their subclasses with it)


class ModelAdapter:
    """Base class of family adapters. Subclasses set ``name``/``description`` and override the hooks."""

    name: str = "base"
    description: str = ""

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Modules calibrated one after another, in forward order (patch embedding, blocks, head).

        Every quantized op must sit inside exactly one unit. Units are small enough that their
        captured inputs for the whole calibration set fit in memory.
        """
        raise NotImplementedError

    def head_names(self, model: nn.Module) -> list[str]:
        """Qualified names of the classification head modules (kept float unless ``quantize_head``)."""
        return []

    def backbone_names(self, model: nn.Module) -> list[str]:
        """Qualified names of a CNN backbone's modules (a detector's; kept float unless ``quantize_backbone``)."""
        return []

    def data_config(self, model: nn.Module) -> DataConfig:
        return DataConfig()

    def forward(self, model: nn.Module, images: torch.Tensor):
        """How a batch of preprocessed images runs through the model (calibration and evaluation use it)."""
        return model(images)

    def why_not(self, model: nn.Module) -> str | None:
        """Why a model this adapter would otherwise consider is not matched (for the error message), or ``None``."""
        return None

    #: don't swap Linears / convolutions the forward never calls (the generic adapter: they could not be calibrated)
    skip_unused: bool = False
    #: capture the attention products of modules the registry does not know (:mod:`vitq.nn.capture`)
    captures: bool = False

    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The quantized attention modules (after swapping), for reporting and mixed precision."""
        from vitq.nn.qattention import QuantAttentionMixin

        return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantAttentionMixin)]


_ADAPTERS: list[ModelAdapter] = []
_ADAPTER_MODULES = (
    "vitq.models.timm_vit",
    "vitq.models.timm_swin",
    "vitq.models.hf_vit",
    "vitq.models.hf_swin",
    "vitq.models.hf_detr",
    "vitq.models.generic",  # last: any other model whose forward computes attention
)
_loaded = False


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    _ADAPTERS.append(cls())
    return cls


def _load_adapters() -> None:
    global _loaded
    if _loaded:
        return
    import importlib

    for mod in _ADAPTER_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            # The family's library (timm, transformers) is not installed: that family is unavailable.
            if (e.name or "").split(".")[0] not in ("timm", "transformers", "torchvision") and e.name != mod:
                raise
    _loaded = True


def adapters() -> list[ModelAdapter]:
    """Registered adapters in the order of ``_ADAPTER_MODULES`` (independent of import order)."""
    _load_adapters()
    rank = {m: i for i, m in enumerate(_ADAPTER_MODULES)}
    return sorted(_ADAPTERS, key=lambda a: rank.get(type(a).__module__, len(rank)))


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for this model, or :class:`UnsupportedModelError` naming its class and the families."""
    for a in adapters():
        if a.matches(model):
            return a
    families = "; ".join(f"{a.name} ({a.description})" for a in adapters()) or "(none: install the timm or hf extra)"
    reasons = [r for a in adapters() if (r := a.why_not(model))]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    raise UnsupportedModelError(
        f"vitq has no adapter for {type(model).__module__}.{type(model).__name__}{why}. Supported families: {families}"
    )


def adapter_by_name(name: str) -> ModelAdapter:
    for a in adapters():
        if a.name == name:
            return a
    raise UnsupportedModelError(f"unknown adapter {name!r}; known: {[a.name for a in _ADAPTERS]}")

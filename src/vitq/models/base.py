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
    raise UnsupportedModelError(
        f"vitq has no adapter for {type(model).__module__}.{type(model).__name__}. Supported families: {families}"
    )


def adapter_by_name(name: str) -> ModelAdapter:
    for a in adapters():
        if a.name == name:
            return a
    raise UnsupportedModelError(f"unknown adapter {name!r}; known: {[a.name for a in _ADAPTERS]}")


def clone_as(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A new instance of subclass ``cls`` that shares ``module``'s parameters, buffers and submodules.

    Used to swap an attention module for its quantized subclass: the subclass reuses every method and
    attribute of the original and only adds explicit matmul modules and its own ``forward``. The
    original module is left untouched (its registries are copied, not shared).
    """
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
    q = cls.__new__(cls)
    q.__dict__.update(module.__dict__)
    for registry in ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks"):
        if registry in module.__dict__:
            q.__dict__[registry] = type(module.__dict__[registry])(module.__dict__[registry])
    q.__dict__["_non_persistent_buffers_set"] = set(module.__dict__.get("_non_persistent_buffers_set", ()))
    return q


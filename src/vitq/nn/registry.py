"""The module-swap registry: which float module class becomes which quantized module.

Quantized modules register with ``@register_qmodule(FloatClass)`` and build themselves with a
``from_module(module, qconfig)`` classmethod. ``quantize`` walks the model and swaps every module whose
exact class is registered; no forward is patched and no model file is copied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_QMODULES: dict[type[nn.Module], type[nn.Module]] = {}


def register_qmodule(float_cls: type[nn.Module]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@register_qmodule(nn.Linear) class QuantLinear(...)``."""

    def deco(qcls: type[nn.Module]) -> type[nn.Module]:
        if not hasattr(qcls, "from_module"):
            raise TypeError(f"{qcls.__name__} must define a from_module(module, qconfig) classmethod")
        _QMODULES[float_cls] = qcls
        return qcls

    return deco


def qmodule_for(module: nn.Module) -> type[nn.Module] | None:
    """The quantized class registered for this module's exact class (subclasses are not matched)."""
    return _QMODULES.get(type(module))


def registered() -> dict[type[nn.Module], type[nn.Module]]:
    return dict(_QMODULES)


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


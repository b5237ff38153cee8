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

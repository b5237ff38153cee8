"""vitq: post-training quantization of vision transformers.

Lifecycle: :func:`quantize` -> :func:`calibrate` -> :func:`freeze` (or :func:`pipeline` for all three),
then :func:`vitq.export.save_quantized` / :func:`vitq.export.load_quantized`. Methods are registered
recipes (:data:`vitq.recipes.RECIPES`). See the README for the command line and docs/design.md.

The names below are imported on first use (PEP 562), so that ``import vitq`` (and ``vitq --help``, which
imports the package first) does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "CalibrationReport", "OpOptions", "QuantConfig", "QuantInfo", "QuantizedModel", "calibrate", "count_quant_ops",
    "freeze", "get_quant_info", "pipeline", "quantization_disabled", "quantize", "set_quantization_enabled",
    "__version__",
]

if TYPE_CHECKING:
    from vitq.calibration.engine import CalibrationReport, calibrate
    from vitq.config import OpOptions, QuantConfig
    from vitq.info import QuantInfo, get_quant_info
    from vitq.lifecycle import QuantizedModel, freeze, pipeline, quantize
    from vitq.nn.qops import count_quant_ops, quantization_disabled, set_quantization_enabled


def _load(name: str):
    """The public name ``name`` from the module that defines it."""
    if name in ("CalibrationReport", "calibrate"):
        from vitq.calibration import engine as mod
    elif name in ("OpOptions", "QuantConfig"):
        from vitq import config as mod
    elif name in ("QuantInfo", "get_quant_info"):
        from vitq import info as mod
    elif name in ("QuantizedModel", "freeze", "pipeline", "quantize"):
        import vitq.lifecycle as mod
    else:
        from vitq.nn import qops as mod
    return getattr(mod, name)


def __getattr__(name: str):
    if name in __all__:
        value = _load(name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'vitq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

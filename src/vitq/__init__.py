"""vitq: post-training quantization of vision transformers.

Lifecycle: :func:`quantize` -> :func:`calibrate` -> :func:`freeze`, then :func:`save_quantized` /
:func:`load_quantized`. See the README for the command line.
"""

from vitq.api import (
    QuantInfo,
    count_quant_ops,
    freeze,
    get_quant_info,
    quantization_disabled,
    quantize,
    set_quantization_enabled,
)
from vitq.calibration.engine import CalibrationReport, calibrate
from vitq.config import QuantConfig

__version__ = "0.1.0"

__all__ = [
    "CalibrationReport", "QuantConfig", "QuantInfo", "calibrate", "count_quant_ops", "freeze",
    "get_quant_info", "quantization_disabled", "quantize", "set_quantization_enabled", "__version__",
]

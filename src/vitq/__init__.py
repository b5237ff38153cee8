"""vitq: post-training quantization of vision transformers.

Lifecycle: :func:`quantize` -> :func:`calibrate` -> :func:`freeze` (or :func:`pipeline` for all three),
then :func:`vitq.export.save_quantized` / :func:`vitq.export.load_quantized`. Methods are registered
recipes (:data:`vitq.recipes.RECIPES`). See the README for the command line and docs/design.md.
"""

from vitq.calibration.engine import CalibrationReport, calibrate
from vitq.config import OpOptions, QuantConfig
from vitq.info import QuantInfo, get_quant_info
from vitq.lifecycle import QuantizedModel, freeze, pipeline, quantize
from vitq.nn.qops import count_quant_ops, quantization_disabled, set_quantization_enabled

__version__ = "0.1.0"

__all__ = [
    "CalibrationReport", "OpOptions", "QuantConfig", "QuantInfo", "QuantizedModel", "calibrate", "count_quant_ops",
    "freeze", "get_quant_info", "pipeline", "quantization_disabled", "quantize", "set_quantization_enabled",
    "__version__",
]

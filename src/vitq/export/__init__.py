from vitq.export.packing import load_packed, load_saved, save_packed
from vitq.export.serialization import check_output_path, is_vitq_output, load_quantized, save_quantized

__all__ = ["check_output_path", "is_vitq_output", "load_packed", "load_quantized", "load_saved", "save_packed",
           "save_quantized"]

from vitq.export.packing import load_packed, load_saved, save_packed
from vitq.export.serialization import load_quantized, save_quantized

__all__ = ["load_packed", "load_quantized", "load_saved", "save_packed", "save_quantized"]

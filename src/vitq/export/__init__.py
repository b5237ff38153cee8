from vitq.export.serialization import load_quantized, save_quantized

__all__ = ["load_quantized", "save_quantized"]

"""Function-preserving model transforms applied before quantization (scale/shift folding)."""

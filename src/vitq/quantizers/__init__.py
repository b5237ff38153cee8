from vitq.quantizers.uniform import (
    UniformQuantizer,
    check_bits,
    fake_quantize,
    max_scale,
    qrange,
    quantize,
)

__all__ = ["UniformQuantizer", "check_bits", "fake_quantize", "max_scale", "qrange", "quantize"]

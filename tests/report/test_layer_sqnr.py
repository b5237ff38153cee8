"""Per-op output SQNR against the float model: exact when quantization is off, worse at fewer bits."""

import math

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.errors import VitqError
from vitq.nn.qops import quant_ops
from vitq.report import layer_sqnr


def _calibrated(model, images, bits):
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=bits, a_bits=bits, method="minmax"))
    vitq.calibrate(q, images, progress=False)
    return vitq.freeze(q)


def test_quantization_disabled_gives_infinite_sqnr(calib_images):
    model = make_tiny_vit()
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=4, a_bits=4))  # not calibrated: every quantizer is off
    sqnr = layer_sqnr(model, q, calib_images[:4])
    assert set(sqnr) == set(quant_ops(q)) and len(sqnr) == 13  # conv + 2 blocks x (4 linears + 2 matmuls)
    assert all(v == math.inf for v in sqnr.values())


def test_fewer_bits_lower_sqnr_every_op(calib_images):
    model = make_tiny_vit()
    s8 = layer_sqnr(model, _calibrated(model, calib_images, 8), calib_images[:4])
    s4 = layer_sqnr(model, _calibrated(model, calib_images, 4), calib_images[:4])
    assert all(math.isfinite(v) for v in [*s8.values(), *s4.values()])
    # MinMax on the tiny random ViT, measured: W8A8 31.6..40.0 dB, W4A4 6.3..14.8 dB over the 13 ops
    assert min(s8.values()) > 25
    assert all(s4[n] < s8[n] - 10 for n in s8), {n: (round(s8[n], 1), round(s4[n], 1)) for n in s8}


def test_matches_float_module_by_name_not_position(calib_images):
    """A quantized model of other weights is compared with the float model's same-named modules: low SQNR."""
    model = make_tiny_vit(seed=0)
    other = vitq.quantize(make_tiny_vit(seed=1), vitq.QuantConfig())  # quantization off, other weights
    sqnr = layer_sqnr(model, other, calib_images[:2])
    assert max(sqnr.values()) < 10


def test_rejects_a_quantized_float_model_and_empty_images(calib_images):
    model = make_tiny_vit()
    q = vitq.quantize(model, vitq.QuantConfig())
    with pytest.raises(VitqError, match="float model"):
        layer_sqnr(q, q, calib_images[:2])
    with pytest.raises(VitqError, match="non-empty"):
        layer_sqnr(model, q, torch.empty(0, 3, 32, 32))

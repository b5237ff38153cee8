"""vitq.quantize refuses a float model with NaN or inf in a parameter or buffer, naming the tensor."""

import math

import pytest
import torch

import vitq
from vitq.errors import NonFiniteError


@pytest.mark.parametrize("value,counts", [(math.nan, "1 NaN and 0 inf"), (math.inf, "0 NaN and 1 inf")])
def test_non_finite_parameter_is_named(tiny_vit, value, counts):
    with torch.no_grad():
        tiny_vit.head.weight[3, 1] = value
    with pytest.raises(NonFiniteError, match=f"parameter head.weight: {counts}"):
        vitq.quantize(tiny_vit)
    with pytest.raises(NonFiniteError, match="head.weight"):
        vitq.pipeline(tiny_vit, vitq.QuantConfig(method="minmax"), torch.randn(2, 3, 32, 32), progress=False)


def test_non_finite_buffer_is_named(tiny_vit):
    tiny_vit.blocks[1].register_buffer("running_scale", torch.tensor([1.0, -math.inf]))
    with pytest.raises(NonFiniteError, match="buffer blocks.1.running_scale"):
        vitq.quantize(tiny_vit)


def test_finite_model_and_integer_buffers_pass(tiny_vit):
    tiny_vit.register_buffer("ids", torch.arange(4))
    assert sum(vitq.count_quant_ops(vitq.quantize(tiny_vit)).values()) > 0

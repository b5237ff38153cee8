"""The ``unsigned`` attention map: Eq. 8 on the codes ``0..2^b-1`` (the map is non-negative, so signed codes
leave half of them unused), exported as uint8 with zero point 0 in either activation mode."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit
from helpers_export import calibrated, check_ort_integer_matmuls, registered_pc_recipe

import vitq
from vitq.nn.qops import quant_ops
from vitq.quantizers.uniform import UniformQuantizer
from vitq.recipes import Quantizers

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SMALL = dict(num_candidates=20, max_iters=2)


@pytest.fixture(scope="module")
def unsigned_recipe():
    with registered_pc_recipe("test-unsigned-map", Quantizers(post_softmax="unsigned")) as name:
        yield name


def _attention_maps(model):
    return [op.quantizers()[0] for op in quant_ops(model).values() if op.role == "attn_context"]


@pytest.mark.parametrize("bits", [4, 8])
def test_unsigned_attention_map_uses_every_code_and_beats_signed(unsigned_recipe, test_images, bits):
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    qu = calibrated(make_tiny_vit(), vitq.QuantConfig(method=unsigned_recipe, w_bits=8, a_bits=bits, **SMALL), calib)
    qs = calibrated(make_tiny_vit(), vitq.QuantConfig(method="liu2021-pc", w_bits=8, a_bits=bits, **SMALL), calib)
    for q in _attention_maps(qu):
        assert type(q) is UniformQuantizer and not q.signed and (q.qmin, q.qmax) == (0, 2**bits - 1)
    assert all(q.signed for q in _attention_maps(qs))
    maps = (4 * torch.randn(4, 3, 17, 17, generator=torch.Generator().manual_seed(2))).softmax(-1)
    for q_u, q_s in zip(_attention_maps(qu), _attention_maps(qs)):
        levels = (q_u(maps) / q_u.scale).unique()
        assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= 0 \
            and levels.max() < 2**bits - 1 + 1e-3
        # twice the codes on the same range: half the step, a quarter of the rounding error
        q_s.scale.copy_(q_u.scale * (2**bits - 1) / (2 ** (bits - 1) - 1))
        inside = maps.clamp(max=float(q_u.scale) * (2**bits - 1))
        assert (q_u(inside) - inside).pow(2).mean() < 0.5 * (q_s(inside) - inside).pow(2).mean()


@pytest.mark.parametrize("activation_type", ["u8", "s8"])
def test_unsigned_attention_map_exports_as_uint8_and_matches(unsigned_recipe, test_images, tmp_path, activation_type):
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q = calibrated(make_tiny_vit(), vitq.QuantConfig(method=unsigned_recipe, w_bits=8, a_bits=8, **SMALL), calib)
    check_ort_integer_matmuls(q, make_tiny_vit(), test_images, tmp_path / "u.onnx", activation_type, 0)

"""ONNX export of FQ-ViT's log2 attention map (the ``*-log2`` recipes).

The 4-bit log2 values ``2^-c`` are split by code into two uint8 operands on power-of-two grids, so attn·V
becomes two integer MatMuls on the same V codes (:class:`vitq.export.onnx_qdq.QDQLog2MatMul`), exactly.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit
from helpers_export import calibrated, check_ort_integer_matmuls, sim_logits

import vitq
from vitq.errors import ExportError
from vitq.export.onnx_export import export_onnx
from vitq.export.onnx_qdq import QDQLog2MatMul, qdq_twin
from vitq.nn.qops import quant_ops
from vitq.quantizers.log import Log2Quantizer

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SMALL = dict(num_candidates=20, max_iters=2)


@pytest.fixture(scope="module")
def log2_model():
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = vitq.QuantConfig(method="liu2021-pc-recon-log2", w_bits=4, a_bits=4, recon_iters=0, **SMALL)
    return calibrated(make_tiny_vit(), cfg, calib)


def test_the_split_operands_add_up_to_the_log2_values_bit_for_bit(log2_model):
    op = log2_model.blocks[0].attn.matmul_context
    q = op.quantizers()[0]
    assert type(q) is Log2Quantizer and q.bits == 4
    twin = QDQLog2MatMul(op, "u8", where="m")
    # every code, the rounding ties between codes, underflow and exact zeros
    a = torch.cat([torch.rand(5000) ** 6, 2.0 ** -(torch.arange(0, 18) + 0.5), 2.0 ** -torch.arange(0, 18.0),
                   torch.zeros(3)]).reshape(1, 1, -1, 1)
    eye = torch.ones(1, 1, 1, 1)
    twin.b_quantizer = torch.nn.Identity()
    h = twin.half
    c = torch.round(-torch.log2(a))
    high = torch.where(c < h, torch.pow(2.0, -c.clamp(0, 2 * h - 1)), torch.zeros_like(a))
    # each operand is an exact uint8 multiple of its scale, at most 2^(h-1) = 128, unchanged by its Q/DQ
    for part, got, scale in zip((high, q(a) - high), twin.split(a), (2.0 ** -(h - 1), 2.0 ** -(2 * h - 1))):
        codes = part / scale
        assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 128
        assert torch.equal(got, part)
    assert torch.equal(twin(a, eye), q(a))


def test_twin_swaps_every_attention_product_and_matches_the_simulation(log2_model, test_images):
    names = [n for n, op in quant_ops(log2_model).items() if type(op.quantizers()[0]) is Log2Quantizer]
    assert names == ["blocks.0.attn.matmul_context", "blocks.1.attn.matmul_context"]
    twin = qdq_twin(log2_model)
    assert all(isinstance(twin.get_submodule(n), QDQLog2MatMul) for n in names)
    assert torch.allclose(sim_logits(twin, test_images), sim_logits(log2_model, test_images), atol=1e-4, rtol=0)


@pytest.mark.parametrize("activation_type", ["u8", "s8"])
def test_ort_runs_two_integer_matmuls_per_attention_map_and_matches(log2_model, test_images, tmp_path,
                                                                     activation_type):
    # every Linear and attention product an integer MatMul, and two for each of the 2 ops exported as two
    check_ort_integer_matmuls(log2_model, make_tiny_vit(), test_images, tmp_path / "log2.onnx", activation_type, 2)


def test_log2_codes_wider_than_4_bits_are_refused(tmp_path):
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q = calibrated(make_tiny_vit(), vitq.QuantConfig(method="liu2021-pc-recon-log2", w_bits=6, a_bits=6,
                                                     recon_iters=0, **SMALL), calib)
    with pytest.raises(ExportError, match=r"matmul_context \(attention map\): 6-bit log2 codes"):
        export_onnx(q, tmp_path / "p.onnx")

"""ONNX export of the sign-split two-region quantizer (OPT-m of MPTQ-ViT, PTQ4ViT's post-GELU).

Its integer form is two scales, one selected by the sign: the fc2 Linear becomes two integer MatMuls on
the same int8 weight codes (one per region, each with its own rescale) and an Add.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit
from helpers_export import calibrated, check_ort_integer_matmuls, sim_logits

import vitq
from vitq.errors import ExportError
from vitq.export.onnx_export import export_onnx
from vitq.export.onnx_qdq import QDQTwoRegionLinear, qdq_twin
from vitq.nn.qops import quant_ops
from vitq.quantizers.two_region import TwoRegionQuantizer

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SMALL = dict(num_candidates=20, max_iters=2)


@pytest.fixture(scope="module")
def optm_model():
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return calibrated(make_tiny_vit(), vitq.QuantConfig(method="mptq", w_bits=6, a_bits=6, **SMALL), calib)


def test_twin_swaps_fc2_and_matches_the_simulation(optm_model, test_images):
    fc2 = [n for n, op in quant_ops(optm_model).items() if isinstance(op.quantizers()[0], TwoRegionQuantizer)]
    assert fc2 == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    q = optm_model.blocks[0].mlp.fc2.input_quantizer
    assert q.ratio > 1  # two different scales, so the split is really exercised
    twin = qdq_twin(optm_model)
    assert all(isinstance(twin.get_submodule(n), QDQTwoRegionLinear) for n in fc2)
    y_sim, y_twin = sim_logits(optm_model, test_images), sim_logits(twin, test_images)
    assert torch.allclose(y_twin, y_sim, atol=1e-4, rtol=0)  # summation order only


def test_region_values_are_the_quantizers_values_bit_for_bit(optm_model):
    """Q+(x) + Q-(x) of the twin equals the two-region fake quantization exactly, ties included."""
    op = optm_model.blocks[0].mlp.fc2
    twin = QDQTwoRegionLinear(op, "u8", where="fc2")
    q = op.input_quantizer
    pos, neg = float(q.scale), float(q.neg_scale)
    x = torch.cat([torch.randn(4000) * 3 * pos * 2 ** (q.bits - 1) / 4,
                   (torch.arange(-40, 40) + 0.5) * pos, (torch.arange(-40, 1) + 0.5) * neg])
    assert torch.equal(twin.pos(x) + twin.neg(x), q(x))


@pytest.mark.parametrize("activation_type", ["u8", "s8"])
def test_ort_runs_two_integer_matmuls_per_fc2_and_matches(optm_model, test_images, tmp_path, activation_type):
    # every Linear and attention product an integer MatMul, and two for each of the 2 ops exported as two
    check_ort_integer_matmuls(optm_model, make_tiny_vit(), test_images, tmp_path / "optm.onnx", activation_type, 2)


def test_post_softmax_twin_uniform_is_not_exportable(tmp_path, test_images):
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q = calibrated(make_tiny_vit(), vitq.QuantConfig(method="liu2021", optm_softmax=True, **SMALL), calib)
    with pytest.raises(ExportError, match=r"matmul_context \(input\): quantizer TwinUniformQuantizer"):
        export_onnx(q, tmp_path / "p.onnx")

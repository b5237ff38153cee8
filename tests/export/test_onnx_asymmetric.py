"""Asymmetric per-tensor activations (``Quantizers(inputs="affine")``: codes ``0..2^b-1`` and an integer zero
point) export as uint8 Q/DQ with that zero point, in either activation mode; a zero point that is not an
integer (RepQ-ViT's reparameterisation) and asymmetric weights are refused by name."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit
from helpers_export import calibrated, check_ort_integer_matmuls, registered_pc_recipe, sim_logits

import vitq
from vitq.errors import ExportError
from vitq.export.onnx_export import export_onnx
from vitq.export.onnx_qdq import QDQActivation, qdq_twin
from vitq.nn.qops import quant_ops
from vitq.quantizers.affine import AffineQuantizer
from vitq.recipes import Quantizers

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SMALL = dict(num_candidates=20, max_iters=2)


@pytest.fixture(scope="module")
def asym_recipe():
    with registered_pc_recipe("test-asym-inputs", Quantizers(inputs="affine")) as name:
        yield name


def _asym(model) -> list[tuple[str, AffineQuantizer]]:
    return [(f"{n}[{i}]", q) for n, op in quant_ops(model).items() for i, q in enumerate(op.quantizers()[:2])
            if isinstance(q, AffineQuantizer)]


@pytest.mark.parametrize("bits", [8, 4])
def test_twin_equals_the_simulation_bit_for_bit(asym_recipe, test_images, bits):
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q = calibrated(make_tiny_vit(), vitq.QuantConfig(method=asym_recipe, w_bits=bits, a_bits=bits, **SMALL), calib)
    asym = _asym(q)
    # Q, K, V and the projections' inputs; a zero point away from the middle somewhere (asymmetric ranges)
    assert len(asym) >= 8 and any(abs(float(a.zero_point) - (2**bits - 1) / 2) > 1 for _, a in asym)
    twin = qdq_twin(q)
    swapped = [m for m in twin.modules() if isinstance(m, QDQActivation) and m.zero_point is not None]
    assert len(swapped) == len(asym)
    x = 3 * torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(2))
    for (_, a), m in zip(asym, swapped):
        assert torch.equal(m(x), a(x))  # every code, the clamps at both ends included
    assert torch.equal(sim_logits(twin, test_images), sim_logits(q, test_images))


@pytest.mark.parametrize(("bits", "activation_type"), [(8, "u8"), (8, "s8"), (4, "u8")])
def test_ort_runs_integer_matmuls_and_matches(asym_recipe, test_images, tmp_path, bits, activation_type):
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q = calibrated(make_tiny_vit(), vitq.QuantConfig(method=asym_recipe, w_bits=bits, a_bits=bits, **SMALL), calib)
    check_ort_integer_matmuls(q, make_tiny_vit(), test_images, tmp_path / "a.onnx", activation_type, 0)


def test_non_integer_zero_point_and_asymmetric_weights_are_refused(asym_recipe, calib_images, tmp_path):
    q = calibrated(make_tiny_vit(), vitq.QuantConfig(method=asym_recipe, **SMALL), calib_images)
    name, a = _asym(q)[0]
    a.zero_point.add_(0.5)
    with pytest.raises(ExportError, match=r"zero point .*not an integer code"):
        export_onnx(q, tmp_path / "a.onnx")
    r = calibrated(make_tiny_vit(), vitq.QuantConfig(method="repq-vit"), calib_images)
    with pytest.raises(ExportError, match=r"asymmetric weight quantizer|not an integer code"):
        export_onnx(r, tmp_path / "r.onnx")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "r.onnx").exists()

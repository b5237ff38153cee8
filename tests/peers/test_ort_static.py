"""ONNX Runtime's static PTQ as a peer: it runs on a tiny ViT, quantizes every matmul, stays close to float."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit

from vitq.bench.results import validate_row
from vitq.errors import ConfigError
from vitq.eval.metrics import predict, sqnr_db
from vitq.export.onnx_export import export_float_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from vitq.peers.ort_static import ort_quantize_static, ort_static_rows, run_ort_static  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = make_tiny_vit()
    with torch.no_grad():  # logits O(1), so the comparison with float means something
        m.head.weight.normal_(0.0, 0.5)
    return m


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("calibrator", ["minmax", "percentile", "entropy"])
def test_run_ort_static_close_to_float(model, calibrator, tmp_path):
    calib, test = _images(16, 1), _images(32, 2)
    labels = torch.arange(32) % 10
    res = run_ort_static(model, calib, test, labels, calibrator, threads=1, workdir=tmp_path)
    ref = predict(model, test)
    sqnr = sqnr_db(ref, res["logits"])
    # Measured on this model: 31.7 dB (minmax), 31.6 dB (percentile), 31.7 dB (entropy); agreement 1.0.
    print(f"ort-{calibrator}: SQNR vs float {sqnr:.1f} dB, agreement {res['agreement']:.3f}")
    assert sqnr >= 25.0 and res["agreement"] >= 0.9
    assert res["method"] == f"ort-{calibrator}" and 0 <= res["top1"] <= 1 and 0 <= res["top1_float"] <= 1
    assert res["num_calib"] == 16 and res["num_test"] == 32 and res["img_s"] > 0 and res["calib_seconds"] > 0


def test_quantized_graph_has_qdq_on_every_matmul_but_the_head(model, tmp_path):
    f = export_float_onnx(model, tmp_path / "f.onnx")
    proto = onnx.load(ort_quantize_static(f, tmp_path / "q.onnx", _images(8, 1), "minmax"))
    producers = {o: n for n in proto.graph.node for o in n.output}

    def dequantized(name: str) -> bool:
        p = producers.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    compute = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    quantized = [n for n in compute if all(dequantized(i) for i in n.input[:2])]
    float_ops = [n for n in compute if n not in quantized]
    assert len(quantized) == 13  # patch Conv, 8 block Linears, Q·K^T and attn·V of 2 blocks
    assert [n.op_type for n in float_ops] == ["Gemm"] and float_ops[0].output[0] == proto.graph.output[0].name
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) == 9  # (the other int8 initializers are per-channel zero points)


def test_rows_follow_the_results_schema(model):
    rows = ort_static_rows("tiny-vit", model, _images(8, 1), _images(8, 2), torch.zeros(8, dtype=torch.long),
                           calibrators=("percentile",), command="pytest", threads=1)
    assert len(rows) == 1 and rows[0]["method"] == "ort-percentile" and rows[0]["w_bits"] == rows[0]["a_bits"] == 8
    validate_row(rows[0])
    assert "logits" not in rows[0]


def test_unknown_calibrator(model, tmp_path):
    f = export_float_onnx(model, tmp_path / "f.onnx")
    with pytest.raises(ConfigError, match="calibrator='kl'"):
        ort_quantize_static(f, tmp_path / "q.onnx", _images(2, 1), "kl")

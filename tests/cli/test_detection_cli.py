"""The command line on a detector: quantize -> eval --quantized -> export -> eval --onnx on detr-synth, COCO mAP
at each step; detection data for a classifier and classification data for a detector are one-line errors."""

from __future__ import annotations

import json

import pytest
from helpers_cli import only_line, vitq

from vitq.cli.app import EXIT_BAD_INPUT
from vitq.data.fashion_mnist import find_fashion_mnist_dir
from vitq.models.detr_synth import ASSET_DIR

needs_detr = pytest.mark.skipif(not (ASSET_DIR / "model.safetensors").is_file() or find_fashion_mnist_dir("test") is None,
                                reason="needs the trained detr-synth and the full Fashion-MNIST (make bench-setup)")


def _json(res) -> dict:
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])


def test_detection_data_for_a_classifier(tmp_path):
    res = vitq("eval", "--model", "vitq:fmnist-vit", "--data", "detr-synth:test", cwd=tmp_path)
    assert res.returncode == EXIT_BAD_INPUT and "not a detector" in only_line(res)


@needs_detr
def test_classification_data_for_a_detector(tmp_path):
    res = vitq("eval", "--model", "vitq:detr-synth", "--data", "fmnist-subset:test", cwd=tmp_path)
    assert res.returncode == EXIT_BAD_INPUT and "detector" in only_line(res)


@needs_detr
def test_quantize_reload_export_onnx(tmp_path):
    pytest.importorskip("pycocotools")
    pytest.importorskip("onnxruntime")
    q = _json(vitq("--threads", "1", "quantize", "--model", "vitq:detr-synth", "--calib", "detr-synth:val",
                   "--num-calib", "8", "--method", "minmax", "--eval-data", "detr-synth:test", "--num-test", "30",
                   "--no-report", "--out", "q", cwd=tmp_path))
    assert q["task"] == "detection" and q["num_test"] == 30 and 0 <= q["map"] <= 1 and 0 <= q["map_float"] <= 1
    # the thread count and batch size of quantize's evaluation (16): others change the float summation order,
    # which can swap two detections' scores and move the mAP in its 4th decimal (the reload is bit-exact)
    e = _json(vitq("--threads", "1", "eval", "--quantized", "q", "--data", "detr-synth:test", "--num-test", "30",
                   "--batch-size", "16", cwd=tmp_path))
    assert (e["map"], e["map_float"]) == (q["map"], q["map_float"])  # the reloaded model is the same
    assert _json(vitq("export", "--quantized", "q", "--out", "q.onnx", cwd=tmp_path))["kind"] == "qdq-detr"
    o = _json(vitq("--threads", "1", "eval", "--onnx", "q.onnx", "--data", "detr-synth:test", "--num-test", "30", "--ort-threads", "1",
                   cwd=tmp_path))
    # ORT's integer arithmetic rounds otherwise than the float simulation: on 30 canvases (about 75 objects)
    # a box crossing an IoU threshold or two swapped scores move the mAP by up to about 0.01 (on the 1,000 test
    # canvases the bench's ORT and simulated mAP agree within 0.001 at W8A8)
    assert abs(o["map"] - q["map"]) <= 0.02 and o["map_float"] == q["map_float"]

"""A quantized DETR exports to ONNX QDQ and runs in ONNX Runtime: outputs and COCO mAP match the simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

import vitq  # noqa: E402
from vitq.data.coco import load_coco  # noqa: E402
from vitq.data.synth_detection import SynthSpec, write_coco_split  # noqa: E402
from vitq.errors import ExportError  # noqa: E402
from vitq.eval.detection import evaluate_detection  # noqa: E402
from vitq.export.onnx_detr import OrtDetector, export_detr_onnx  # noqa: E402
from vitq.models.detr_synth import build_detr_synth, detr_synth_data_config  # noqa: E402

TINY = dict(in_chans=1, image_size=64, widths=[8, 16, 16], depth=1, d_model=32, encoder_layers=2, decoder_layers=2,
            heads=4, ffn_dim=64, num_queries=5, num_labels=10)


@pytest.fixture(scope="module")
def qdetr():
    torch.manual_seed(0)
    model = build_detr_synth(TINY).eval()
    model.vitq_data_config = detr_synth_data_config(TINY)
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax"))
    vitq.calibrate(q, torch.randn(8, 1, 64, 64, generator=torch.Generator().manual_seed(1)), progress=False)
    return vitq.freeze(q) or q


def test_ort_matches_simulation(qdetr, tmp_path):
    path = export_detr_onnx(qdetr, tmp_path / "detr.onnx")
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    ort_out = OrtDetector(path, threads=1)(x)
    with torch.no_grad():
        sim = qdetr(pixel_values=x)
    # the same codes; float rounding differences flip an occasional code at a tie
    assert (ort_out.logits - sim.logits).abs().max() < 2e-2 * sim.logits.abs().max()
    assert (ort_out.pred_boxes - sim.pred_boxes).abs().max() < 1e-2
    with pytest.raises(ExportError, match="pixel-mask"):
        OrtDetector(path, threads=1)(torch.zeros(1, 3, 64, 64))


def test_padded_batches_of_another_size_run_with_their_pixel_mask(qdetr, tmp_path):
    """The mask is a graph input and height / width are symbolic: a batch padded to 80 x 72 (images of
    64 x 48 and 80 x 72, the mask packed as the last channel, as vitq's detection batches carry it)
    gives the simulation's outputs, and the padding matters (a mask of ones gives other outputs)."""
    from vitq.models.hf_detr import pack_pixel_mask

    path = export_detr_onnx(qdetr, tmp_path / "detr.onnx")
    x = torch.randn(2, 1, 80, 72, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 80, 72)
    x[0, :, 64:], x[0, :, :, 48:] = 0, 0
    mask[0, 64:], mask[0, :, 48:] = 0, 0
    packed = pack_pixel_mask(x, mask)
    ort_out = OrtDetector(path, threads=1)(packed)
    with torch.no_grad():
        sim = qdetr.vitq_info.forward(qdetr, packed)
        unmasked = qdetr(pixel_values=x)
    assert (ort_out.logits - sim.logits).abs().max() < 2e-2 * sim.logits.abs().max()
    assert (ort_out.pred_boxes - sim.pred_boxes).abs().max() < 1e-2
    # without the mask the padded image gives other outputs, by more than the tolerance above
    assert (unmasked.logits[0] - sim.logits[0]).abs().max() > 2e-2 * sim.logits.abs().max()


def test_ort_map_within_half_a_point(qdetr, tmp_path):
    rng = np.random.default_rng(0)
    imgs = np.zeros((20, 28, 28), np.uint8)
    imgs[:, 6:22, 6:22] = rng.integers(100, 255, size=(20, 1, 1))
    d = write_coco_split(tmp_path / "t", "test", 6, spec=SynthSpec(canvas=64, min_size=12, max_size=28),
                         pool=(imgs, np.arange(20) % 10))
    dset = load_coco(f"coco:{d}", detr_synth_data_config(TINY))
    sim = evaluate_detection(qdetr, dset, forward=qdetr.vitq_info.forward)
    ort = evaluate_detection(OrtDetector(export_detr_onnx(qdetr, tmp_path / "d.onnx"), threads=1), dset)
    assert abs(ort.map - sim.map) <= 0.005 and abs(ort.map50 - sim.map50) <= 0.005


def test_only_detr():
    from conftest import make_tiny_vit

    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(method="minmax"))
    with pytest.raises(ExportError, match="adapter"):
        export_detr_onnx(q, "unused.onnx")

"""ONNX QDQ export of a quantized DETR and its execution in ONNX Runtime with DETR's post-processing.

The graph is the one :func:`vitq.export.onnx_export.export_onnx` writes (int8 weight codes, Q/DQ on every
quantized matmul input, both attention products of every self- and cross-attention included; the float
backbone and heads as float ops), traced from the same QDQ twin, with two outputs: ``logits``
``(batch, queries, classes + 1)`` and ``pred_boxes`` ``(batch, queries, 4)``. Its one input is ``images``
``(batch, C, H, W)``: batches without padding (a pixel mask of ones, as the synthetic set); a padded batch
is an :class:`~vitq.errors.ExportError` at run time rather than a silently wrong mAP.

    export_detr_onnx(qmodel, "detr.onnx")
    dets = OrtDetector("detr.onnx").predict_detections(dset)      # COCO detections
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from vitq.errors import ExportError
from vitq.export.onnx_export import DEFAULT_OPSET, _example_input, _finish, prepare_qdq
from vitq.utils.atomic import scratch_dir

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAMES = "images", ("logits", "pred_boxes")


class _DetrOutputs(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=images)
        return out.logits, out.pred_boxes


@torch.no_grad()
def export_detr_onnx(qmodel: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, activation_type: str = "u8",
                     example: torch.Tensor | None = None) -> Path:
    """Export a calibrated vitq DETR (``DetrForObjectDetection``) to ONNX QDQ with outputs ``logits`` and
    ``pred_boxes``; the batch dimension is symbolic, the image size fixed to the example's."""
    from vitq.info import get_quant_info

    info = get_quant_info(qmodel)
    if info.adapter != "hf-detr":
        raise ExportError(f"export_detr_onnx exports DETR models; this one has adapter {info.adapter!r} "
                          "(use vitq.export.onnx_export.export_onnx)")
    path, twin, ops = prepare_qdq(qmodel, activation_type, path)
    axes = {n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)}
    with scratch_dir(path) as d:
        tmp = Path(d) / "traced.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and shape-to-int warnings
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(_DetrOutputs(twin).eval(), (_example_input(qmodel, example),), str(tmp), dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes, do_constant_folding=True)
        proto = _finish(tmp, path, qmodel, {"kind": "qdq-detr", "activation_type": activation_type, "ops": ops},
                        graph_pass=True)
    log.info("exported DETR with %d quantized ops to %s (%d nodes)", len(ops), path, len(proto.graph.node))
    return path


class OrtDetector:
    """An exported DETR in an ONNX Runtime session: ``(logits, pred_boxes)`` per batch, and COCO detections."""

    def __init__(self, path: str | Path, threads: int = 2):
        import onnxruntime as ort

        from vitq.export.ort_runtime import PROVIDERS, session_options

        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=list(PROVIDERS))
        self.channels = self.session.get_inputs()[0].shape[1]

    def __call__(self, images: torch.Tensor) -> SimpleNamespace:
        if isinstance(self.channels, int) and images.shape[1] != self.channels:
            raise ExportError(f"the ONNX DETR takes {self.channels}-channel images without padding; got a batch of "
                              f"shape {tuple(images.shape)} (a pixel-mask channel: padded images are not supported)")
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        logits, boxes = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))

    def parameters(self):  # predict_detections asks for a device
        yield torch.zeros(())

    def eval(self) -> OrtDetector:
        return self

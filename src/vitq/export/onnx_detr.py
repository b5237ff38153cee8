"""ONNX QDQ export of a quantized DETR and its execution in ONNX Runtime with DETR's post-processing.

The graph is the one :func:`vitq.export.onnx_export.export_onnx` writes (int8 weight codes, Q/DQ on every
quantized matmul input, both attention products of every self- and cross-attention included; the float
backbone and heads as float ops), traced from the same QDQ twin, with two outputs: ``logits``
``(batch, queries, classes + 1)`` and ``pred_boxes`` ``(batch, queries, 4)``. Its inputs are ``images``
``(batch, C, H, W)`` and DETR's ``pixel_mask`` ``(batch, H, W)`` (int64, 1 = real pixel, 0 = padding), as
``DetrForObjectDetection`` takes them; batch, height and width are symbolic, so a batch of images padded to
any common size runs as it does in the simulation. :class:`OrtDetector` takes vitq's batches as they are:
``C`` channels (no padding: a mask of ones) or ``C + 1``, the mask packed as the last channel
(:func:`vitq.models.hf_detr.pack_pixel_mask`, as calibration and evaluation pass it).

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

INPUT_NAME, MASK_NAME, OUTPUT_NAMES = "images", "pixel_mask", ("logits", "pred_boxes")


class _DetrOutputs(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=images, pixel_mask=pixel_mask)
        return out.logits, out.pred_boxes


@torch.no_grad()
def export_detr_onnx(qmodel: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, activation_type: str = "u8",
                     example: torch.Tensor | None = None) -> Path:
    """Export a calibrated vitq DETR (``DetrForObjectDetection``) to ONNX QDQ: inputs ``images`` and
    ``pixel_mask``, outputs ``logits`` and ``pred_boxes``; batch, height and width symbolic."""
    from vitq.info import get_quant_info

    info = get_quant_info(qmodel)
    if info.adapter != "hf-detr":
        raise ExportError(f"export_detr_onnx exports DETR models; this one has adapter {info.adapter!r} "
                          "(use vitq.export.onnx_export.export_onnx)")
    path, twin, ops = prepare_qdq(qmodel, activation_type, path)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, MASK_NAME: {0: "batch", 1: "height", 2: "width"},
            **{n: {0: "batch"} for n in OUTPUT_NAMES}}
    x = _example_input(qmodel, example)
    c = _channels(qmodel)
    images, mask = (x[:, :c], (x[:, c] > 0.5).long()) if x.shape[1] == c + 1 else \
        (x, torch.ones(x.shape[0], *x.shape[2:], dtype=torch.long))
    with scratch_dir(path) as d:
        tmp = Path(d) / "traced.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and shape-to-int warnings
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(_DetrOutputs(twin).eval(), (images.contiguous(), mask), str(tmp), dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME, MASK_NAME],
                              output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes, do_constant_folding=True)
        proto = _finish(tmp, path, qmodel, {"kind": "qdq-detr", "activation_type": activation_type, "ops": ops},
                        graph_pass=True)
    log.info("exported DETR with %d quantized ops to %s (%d nodes)", len(ops), path, len(proto.graph.node))
    return path


def _channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "num_channels", 3))


class OrtDetector:
    """An exported DETR in an ONNX Runtime session: ``(logits, pred_boxes)`` per batch, and COCO detections."""

    def __init__(self, path: str | Path, threads: int = 2):
        import onnxruntime as ort

        from vitq.export.ort_runtime import PROVIDERS, session_options

        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=list(PROVIDERS))
        self.channels = self.session.get_inputs()[0].shape[1]

    def __call__(self, images: torch.Tensor) -> SimpleNamespace:
        """``images``: ``C`` channels (no padding) or ``C + 1``, the pixel mask packed as the last channel."""
        c = self.channels
        if [i.name for i in self.session.get_inputs()] != [INPUT_NAME, MASK_NAME]:
            raise ExportError(f"{self.path}: expected inputs ({INPUT_NAME}, {MASK_NAME}); re-export it with this "
                              "version of vitq.export.onnx_detr.export_detr_onnx")
        if images.shape[1] == c + 1:
            images, mask = images[:, :c], (images[:, c] > 0.5).long()
        elif images.shape[1] == c:
            mask = torch.ones(images.shape[0], *images.shape[2:], dtype=torch.long)
        else:
            raise ExportError(f"the ONNX DETR takes {c}-channel images (or {c + 1} with a pixel-mask channel); got a "
                              f"batch of shape {tuple(images.shape)}")
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        m = np.ascontiguousarray(mask.cpu().numpy(), dtype=np.int64)
        logits, boxes = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x, MASK_NAME: m})
        return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))

    def parameters(self):  # predict_detections asks for a device
        yield torch.zeros(())

    def eval(self) -> OrtDetector:
        return self

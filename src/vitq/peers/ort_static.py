"""ONNX Runtime's own static post-training quantization as a peer of the vitq methods.

The float model is exported to ONNX (:func:`vitq.export.onnx_export.export_float_onnx`) and quantized by
``onnxruntime.quantization.quantize_static`` with its MinMax, Percentile or Entropy calibrator, fed the
same calibration images vitq uses (a :class:`~onnxruntime.quantization.CalibrationDataReader` over them).
Settings: QDQ format, U8S8 (activations QUInt8 with ORT's asymmetric ranges, weights QInt8 symmetric per
output channel), the MatMul / Gemm / Conv ops quantized (the op set vitq quantizes: every matmul input,
both attention products included, the patch-embedding Conv), the classifier head left float unless
``quantize_head`` (as vitq's default). The result is evaluated in ONNX Runtime on the test images.

    res = run_ort_static(model, calib_images, test_images, labels, "entropy")
    rows = ort_static_rows("fmnist-vit", model, calib_images, test_images, labels, command="...")
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from vitq.errors import ConfigError

log = logging.getLogger(__name__)

CALIBRATORS = ("minmax", "percentile", "entropy")
QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")


def _reader(images: torch.Tensor, input_name: str, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """Calibration batches ``{input_name: (B, C, H, W) float32}`` from a tensor of images."""

        def __init__(self):
            self.batches = [b.numpy().astype(np.float32) for b in images.detach().cpu().split(batch_size)]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.batches):
                return None
            self.i += 1
            return {input_name: self.batches[self.i - 1]}

        def rewind(self):
            self.i = 0

    return ImageReader()


def head_nodes(proto) -> list[str]:
    """Names of the MatMul/Gemm nodes that produce the graph output (the classifier), directly or via an Add."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    heads = []
    for out in proto.graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type in ("Add", "Squeeze", "Reshape", "Flatten"):
            node = next((producers[i] for i in node.input if i in producers), None)
        if node is not None and node.op_type in ("MatMul", "Gemm"):
            heads.append(node.name)
    return heads


def ort_quantize_static(float_onnx: str | Path, out: str | Path, calib_images: torch.Tensor, calibrator: str = "minmax",
                        *, quantize_head: bool = False, percentile: float = 99.999, batch_size: int = 8,
                        preprocess: bool = True) -> Path:
    """Quantize a float ONNX file with ``onnxruntime.quantization.quantize_static`` (QDQ, U8S8, per-channel).

    ``preprocess`` runs ORT's ``quant_pre_process`` first; ``percentile`` is the Percentile calibrator's
    percentile (ORT's default, 99.999).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrator not in methods:
        raise ConfigError(f"calibrator={calibrator!r}: choose one of {CALIBRATORS}")
    out = Path(out)
    source = Path(float_onnx)
    captured = io.StringIO()  # ORT's calibrators print progress; keep it out of our stdout
    with contextlib.redirect_stdout(captured), tempfile.TemporaryDirectory(dir=out.parent) as d:
        if preprocess:  # the pre-processing ORT recommends: symbolic shape inference + ONNX optimizations
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(float_onnx), str(Path(d) / "pre.onnx"))
            source = Path(d) / "pre.onnx"
        proto = onnx.load(str(source))
        exclude = [] if quantize_head else head_nodes(proto)
        # MatMul weights are (in, out) initializers: axis 1 is the output channel.
        extra = {"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "CalibPercentile": percentile}
        quantize_static(str(source), str(out), _reader(calib_images, proto.graph.input[0].name, batch_size),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=methods[calibrator], extra_options=extra)
    log.debug("quantize_static (%s) output:\n%s", calibrator, captured.getvalue())
    return out


@torch.no_grad()
def run_ort_static(model: nn.Module, calib_images: torch.Tensor, test_images: torch.Tensor,
                   labels: torch.Tensor | None, calibrator: str = "minmax", *, threads: int = 2,
                   quantize_head: bool = False, batch_size: int = 32, workdir: str | Path | None = None,
                   reference_logits: torch.Tensor | None = None) -> dict:
    """Quantize ``model`` with ORT's static PTQ and evaluate it in ORT.

    Returns:
        ``method`` (``ort-<calibrator>``), ``top1`` / ``top1_float`` (None without labels), ``agreement``
        with the float model, ``calib_seconds`` (quantize_static: calibration and quantization),
        ``file_mb`` of the quantized ONNX, ``img_s`` (ORT, ``threads`` threads, batches of ``batch_size``),
        ``num_calib``, ``num_test`` and ``logits`` (the ORT outputs). ``reference_logits``: the float
        model's logits on ``test_images`` when the caller has them (otherwise computed here).
    """
    from vitq.eval.metrics import agreement, predict, top1
    from vitq.export.onnx_export import export_float_onnx
    from vitq.export.ort_runtime import OrtModel

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        f_path = export_float_onnx(model, Path(d) / "float.onnx")
        t0 = time.perf_counter()
        q_path = ort_quantize_static(f_path, Path(d) / f"ort-{calibrator}.onnx", calib_images, calibrator,
                                     quantize_head=quantize_head)
        calib_seconds = time.perf_counter() - t0
        ort_model = OrtModel(q_path, threads=threads)
        ort_model(test_images[:batch_size])  # warm-up
        t0 = time.perf_counter()
        logits = ort_model.predict(test_images, batch_size)
        img_s = test_images.shape[0] / (time.perf_counter() - t0)
        file_mb = q_path.stat().st_size / 1e6
    ref = reference_logits if reference_logits is not None else predict(model, test_images, batch_size=batch_size)
    res = {"method": f"ort-{calibrator}", "calibrator": calibrator, "agreement": agreement(logits, ref),
           "top1": top1(logits, labels) if labels is not None else None,
           "top1_float": top1(ref, labels) if labels is not None else None,
           "calib_seconds": round(calib_seconds, 2), "file_mb": round(file_mb, 4), "img_s": round(img_s, 2),
           "threads": threads, "num_calib": int(calib_images.shape[0]), "num_test": int(test_images.shape[0]),
           "logits": logits}
    log.info("ORT static %s: top-1 %s (float %s), agreement %.4f, calib %.1fs", calibrator, res["top1"],
             res["top1_float"], res["agreement"], calib_seconds)
    return res


def ort_static_rows(model_name: str, model: nn.Module, calib_images: torch.Tensor, test_images: torch.Tensor,
                    labels: torch.Tensor | None, *, calibrators: tuple[str, ...] = CALIBRATORS, command: str = "",
                    threads: int = 2, quantize_head: bool = False,
                    reference_logits: torch.Tensor | None = None) -> list[dict]:
    """Benchmark rows (the schema of :mod:`vitq.bench.results`) for ``ort-minmax``, ``ort-percentile``,
    ``ort-entropy`` at W8A8, ready for :func:`vitq.bench.results.merge_rows`."""
    import onnxruntime

    rows = []
    for c in calibrators:
        res = run_ort_static(model, calib_images, test_images, labels, c, threads=threads, quantize_head=quantize_head,
                             reference_logits=reference_logits)
        res.pop("logits")
        rows.append({"model": model_name, **res, "w_bits": 8, "a_bits": 8, "mixed_precision": False,
                     "size_mb": res["file_mb"], "command": command, "peer": "onnxruntime.quantization.quantize_static",
                     "ort_version": onnxruntime.__version__, "quant_format": "QDQ",
                     "scheme": "U8S8: activations QUInt8 asymmetric per tensor, weights QInt8 symmetric per channel",
                     "quantize_head": quantize_head})
    return rows

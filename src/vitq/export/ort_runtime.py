"""Run exported models in ONNX Runtime (CPU): logits in batches, with explicit threading.

    model = OrtModel("model.onnx", threads=2)
    logits = model.predict(images, batch_size=32)      # torch.Tensor (N, classes)

Session options: ``intra_op_num_threads`` = ``threads``, one inter-op thread, all graph optimizations
(the QDQ fusions that turn Q/DQ + MatMul into integer kernels need them), and no spinning of idle
worker threads when torch runs in the same process (spinning ORT threads steal the cores torch
needs, and on a shared machine other jobs' cores too).

Numerics vs the vitq simulation: the optimization level is not the cause of differences. ORT's fusions here (QDQ ->
MatMulIntegerToFloat / QLinearMatMul, BiasGelu with exact erf, LayerNormalization with the model's eps)
keep the simulation's numbers up to float rounding; s8 and u8 activations give identical logits.
Per block, ORT reproduces the simulation's output from the same input (DINOv2 ViT-S/14, W8A8 minmax:
5 of 12 blocks with identical codes, the others <= 0.11% of codes off, from one tie flip). On deep models
the whole-model outputs still drift apart, because every flipped code moves later quantizer inputs by a
whole step and flips more codes: on that model most codes differ by the last blocks, and top-1 agrees
on 60/64 test images with ENABLE_ALL (62/64 with DISABLE_ALL, which loses the integer kernels). That is
the model's own float sensitivity, not ORT's: the simulation run in float64 agrees with its float32 run
on 62/64, and with 1e-7 relative noise at its quantizer inputs on 61/64. ``tests/export/test_onnx_blockwise.py`` checks
exactly this split (each block alone bit-close; the whole model within the float-noise floor).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

PROVIDERS = ("CPUExecutionProvider",)
#: kernels ORT runs on integer operands after QDQ fusion
INTEGER_OPS = frozenset({"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QGemm", "QLinearConv",
                         "ConvInteger", "DynamicQuantizeMatMul", "QAttention"})


def session_options(threads: int = 2, *, allow_spinning: bool = False, optimized_model_path: str | Path | None = None):
    """ONNX Runtime session options: ``threads`` intra-op threads, all graph optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    so.log_severity_level = 3  # errors only: ORT warns on every optimized-model save
    return so


class OrtModel:
    """An ONNX file in an ONNX Runtime session, called like a model on preprocessed images.

    Args:
        path: the ``.onnx`` file (from :func:`vitq.export.onnx_export.export_onnx` or any model with
            one image input and logits as first output), or an existing ``onnxruntime.InferenceSession``
            (used as it is; ``threads`` and the other options are then ignored).
        threads: intra-op threads.
        allow_spinning: let idle ORT worker threads spin (faster alone, harmful beside torch or other jobs).
        optimized_model_path: also write the graph ORT actually runs (after its fusions) there.
    """

    def __init__(self, path, threads: int = 2, *, allow_spinning: bool = False,
                 optimized_model_path: str | Path | None = None):
        import onnxruntime as ort

        self.threads = threads
        if isinstance(path, ort.InferenceSession):
            self.path, self.session = None, path
        else:
            self.path = Path(path)
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads, allow_spinning=allow_spinning,
                                                optimized_model_path=optimized_model_path),
                providers=list(PROVIDERS))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Logits ``(B, classes)`` of one batch ``(B, C, H, W)``."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return torch.from_numpy(out)

    def predict(self, images: torch.Tensor, batch_size: int = 64, *, progress: bool = False,
                desc: str = "onnx") -> torch.Tensor:
        """Logits ``(N, classes)`` of ``images`` ``(N, C, H, W)``, in batches; NaN or inf logits raise
        :class:`~vitq.errors.NonFiniteError` (as :func:`vitq.eval.metrics.predict`)."""
        from vitq.eval.metrics import check_finite_logits

        outs, start = [], 0
        for b in tqdm(images.split(batch_size), desc=desc, unit="batch", disable=not progress):
            outs.append(check_finite_logits(self(b), f"{desc}: the ONNX model's logits", start))
            start += b.shape[0]
        return torch.cat(outs)


def ort_predict(model, images: torch.Tensor, batch_size: int = 64, *, threads: int = 2,
                progress: bool = False) -> torch.Tensor:
    """Logits of ``images`` from an ONNX file, an ``InferenceSession`` or an :class:`OrtModel`, in batches."""
    m = model if isinstance(model, OrtModel) else OrtModel(model, threads=threads)
    return m.predict(images, batch_size, progress=progress)


def optimized_op_counts(path: str | Path, threads: int = 1) -> Counter:
    """Node types of the graph ORT runs for ``path`` after its optimizations (QDQ fusion included)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "optimized.onnx"
        OrtModel(path, threads=threads, optimized_model_path=out)
        return Counter(n.op_type for n in onnx.load(str(out)).graph.node)

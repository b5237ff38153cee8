"""ONNX export of calibrated vitq models in QDQ format, the format ``onnxruntime.quantization`` writes.

    qmodel = vitq.quantize(model, cfg); vitq.calibrate(qmodel, images); vitq.freeze(qmodel)
    export_onnx(qmodel, "model.onnx")                  # int8 weights, Q/DQ on every matmul input
    export_float_onnx(model, "model-fp32.onnx")        # the float model, for comparison

Every quantized weight is an int8 initializer holding its exact vitq codes, followed by
``DequantizeLinear``; every quantized matmul input (Linear and patch-embedding Conv inputs, both
operands of Q·K^T and attn·V) goes through ``QuantizeLinear -> DequantizeLinear``; the MatMul/Conv
itself is the float op. ONNX Runtime's QDQ fusion then runs the MatMuls as integer kernels
(``MatMulIntegerToFloat``: int8/uint8 inputs, int32 accumulation, one float rescale). Softmax,
LayerNorm, GELU and the residual adds stay float.

Route (why): the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) traces an export
twin (:func:`vitq.export.onnx_qdq.qdq_twin`) whose quantizers are ``autograd.Function``s with an ONNX
``symbolic``. That emits exactly the Q/DQ nodes we want (including the Clip that makes sub-8-bit
clamps exact) on the same forward that calibration ran, with no graph matching by names, and it needs
no extra dependency (the dynamo exporter needs ``onnxscript``). A small graph pass then puts the graph
in the canonical QDQ form: ``DQ(weight) -> Transpose -> MatMul`` becomes ``DQ(transposed codes) ->
MatMul``, and a quantized ``Gemm`` (a 2-D head) becomes a 3-D ``MatMul + Add``, which ORT fuses (it
does not fuse a Gemm or Conv whose output is not quantized again, so the patch-embedding Conv runs as
a float Conv on dequantized int8 operands: the same numbers, not an integer kernel).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from vitq.errors import DataFormatError, ExportError
from vitq.export.onnx_qdq import ACTIVATION_TYPES, qdq_twin
from vitq.info import QuantInfo
from vitq.nn.qops import quant_ops
from vitq.utils.atomic import atomic_file, scratch_dir
from vitq.utils.jsonio import dumps_strict, loads_strict

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: QuantizeLinear with per-axis scales needs opset 13; the TorchScript exporter stops at 20
OPSETS = range(13, 21)
INPUT_NAME, OUTPUT_NAME = "images", "logits"
META_KEY = "vitq"


class _Logits(nn.Module):
    """Returns the logits tensor of a model whose forward returns a ModelOutput (HF) or a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from vitq.eval.metrics import logits_of

        return logits_of(self.model(images))


def _example_input(model: nn.Module, example: torch.Tensor | None) -> torch.Tensor:
    if example is not None:
        return example
    info = getattr(model, "vitq_info", None)
    dc = getattr(info, "data_config", None) or getattr(model, "vitq_data_config", None)
    if dc is None:
        from vitq.models.loading import model_data_config

        dc = model_data_config(model)
    # Batch 2, so that no batch-1 special case is traced into the graph.
    return torch.randn(2, *dc.input_size, generator=torch.Generator().manual_seed(0))


def trace_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = DEFAULT_OPSET,
               batch_dynamic: bool = True) -> None:
    """Trace ``model`` (one image batch in, logits or a ModelOutput out) to ``path`` with the TorchScript exporter."""
    if opset not in OPSETS:
        raise ExportError(f"opset={opset}: choose one of {OPSETS.start}..{OPSETS.stop - 1}")
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch_dynamic else None
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation, and tracing warns about Python numbers
        # taken from shapes; neither changes the graph of these fixed-resolution models.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(_Logits(model).eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)


# -- graph pass ---------------------------------------------------------------------------------------
def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _transpose_weight_dq(graph, dq, inits: dict) -> bool:
    """Transpose a 2-D weight's int8 codes initializer in place; a per-channel DQ (the only kind with an
    ``axis`` attribute here, see :mod:`vitq.export.onnx_qdq`) moves its axis to the other dimension."""
    from onnx import helper, numpy_helper

    codes = inits.get(dq.input[0])
    if codes is None or len(codes.dims) != 2:
        return False
    arr = numpy_helper.to_array(codes)
    codes.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr.T), codes.name))
    for i, a in enumerate(dq.attribute):
        if a.name == "axis":
            axis = a.i % 2
            del dq.attribute[i]
            dq.attribute.append(helper.make_attribute("axis", 1 - axis))
            break
    return True


def _weight_dq(name: str, producers: dict, inits: dict):
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
        return node
    return None


def _fold_weight_transposes(graph) -> int:
    """``DQ(codes) -> Transpose(perm=[1, 0])`` becomes ``DQ(codes^T)``; a DQ read only by such
    Transposes (the two branches of a :class:`~vitq.export.onnx_qdq.QDQTwoRegionLinear`) is
    transposed once for all of them."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    done = 0
    removed: set[str] = set()  # outputs of Transposes already folded with an earlier reader of their DQ
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.output[0] in removed or list(_attr(node, "perm", [])) != [1, 0]:
            continue
        dq = _weight_dq(node.input[0], producers, inits)
        readers = consumers.get(dq.output[0], []) if dq is not None else []
        if dq is None or not all(r.op_type == "Transpose" and list(_attr(r, "perm", [])) == [1, 0] for r in readers) \
                or not _transpose_weight_dq(graph, dq, inits):
            continue
        for t in readers:
            for c in consumers.get(t.output[0], []):
                for i, name in enumerate(c.input):
                    if name == t.output[0]:
                        c.input[i] = dq.output[0]
            graph.node.remove(t)
            removed.add(t.output[0])
            done += 1
    return done


def _gemm_to_matmul(graph) -> int:
    """A ``Gemm`` on a dequantized activation and a dequantized weight (a 2-D head) becomes a 3-D
    ``MatMul + Add``: ``Unsqueeze -> Q -> DQ -> MatMul -> Add -> Squeeze``.

    ORT fuses neither a Gemm whose output is not quantized again nor a 2-D ``MatMul + Add`` (it turns
    that back into a Gemm before its QDQ fusion); a 3-D MatMul it runs as ``MatMulIntegerToFloat``.
    """
    from onnx import TensorProto, helper

    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    done = 0
    for node in list(graph.node):
        if node.op_type != "Gemm" or _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
            continue
        has_bias = len(node.input) > 2 and node.input[2] != ""
        a, b = producers.get(node.input[0]), _weight_dq(node.input[1], producers, inits)
        q = producers.get(a.input[0]) if a is not None and a.op_type == "DequantizeLinear" else None
        if (q is None or q.op_type != "QuantizeLinear" or b is None or (has_bias and _attr(node, "beta", 1.0) != 1.0)
                or any(len(consumers.get(n.output[0], [])) != 1 for n in (q, a, b))):
            continue
        if _attr(node, "transB", 0) and not _transpose_weight_dq(graph, b, inits):
            continue
        axes = node.name + "_axes"
        graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
        x3 = node.name + "_x3d"
        graph.node.insert(list(graph.node).index(q), helper.make_node("Unsqueeze", [q.input[0], axes], [x3],
                                                                       name=node.name + "_Unsqueeze"))
        q.input[0] = x3
        y3 = node.name + "_y3d"
        new = [helper.make_node("MatMul", [node.input[0], node.input[1]], [y3], name=node.name + "_MatMul")]
        if has_bias:
            new.append(helper.make_node("Add", [y3, node.input[2]], [y3 + "_bias"], name=node.name + "_Add"))
            y3 += "_bias"
        new.append(helper.make_node("Squeeze", [y3, axes], [node.output[0]], name=node.name + "_Squeeze"))
        idx = list(graph.node).index(node)
        graph.node.remove(node)
        for k, n in enumerate(new):
            graph.node.insert(idx + k, n)
        done += 1
    return done


def _drop_unused_initializers(graph) -> None:
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def _save(model_proto, path: Path) -> None:
    import onnx

    with atomic_file(path) as tmp:  # the umask's permissions, as a plain open (mkstemp would give 0600)
        onnx.save(model_proto, str(tmp))


def _meta(model: nn.Module, extra: dict) -> str:
    """The ONNX file's ``vitq`` metadata: the quantized model's :class:`~vitq.info.QuantInfo` record, or
    for a float model its data config and spec."""
    meta: dict = {"format": "vitq-onnx", "format_version": 1, **extra}
    info = getattr(model, "vitq_info", None)
    if isinstance(info, QuantInfo):
        meta.update(info.to_meta())
    else:
        dc, spec = getattr(model, "vitq_data_config", None), getattr(model, "vitq_model_spec", None)
        if dc is not None:
            meta["data_config"] = dc.to_dict()
        if spec:
            meta["model_spec"] = spec
    return dumps_strict(meta, what="ONNX metadata")


def _finish(tmp_onnx: Path, path: Path, model: nn.Module, extra: dict, graph_pass: bool):
    import onnx

    proto = onnx.load(str(tmp_onnx))
    if graph_pass:
        n_t = _fold_weight_transposes(proto.graph)
        n_g = _gemm_to_matmul(proto.graph)
        _drop_unused_initializers(proto.graph)
        log.debug("graph pass: %d weight transposes folded, %d Gemm -> MatMul", n_t, n_g)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, _meta(model, extra)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:  # a bug of the exporter, not of the user's model
        raise ExportError(f"the exported graph does not pass the ONNX checker: {e}") from e
    _save(proto, path)
    return proto


@torch.no_grad()
def prepare_qdq(qmodel: nn.Module, activation_type: str, path: str | Path) -> tuple[Path, nn.Module, dict]:
    """What a QDQ export starts from: the output path (its folder made), the model's QDQ twin and the
    per-op bits recorded in the metadata. Raises :class:`ExportError` for an unknown activation type."""
    if activation_type not in ACTIVATION_TYPES:
        raise ExportError(f"activation_type={activation_type!r}: choose one of {ACTIVATION_TYPES}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    twin = qdq_twin(qmodel, activation_type)
    ops = {n: {"role": op.role, "a_bits": op.quantizers()[0].bits, "b_bits": op.quantizers()[1].bits}
           for n, op in quant_ops(qmodel).items()}
    return path, twin, ops


def export_onnx(qmodel: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, batch_dynamic: bool = True,
                activation_type: str = "u8", example: torch.Tensor | None = None) -> Path:
    """Export a calibrated (frozen or not) vitq model to ONNX in QDQ format.

    Args:
        qmodel: a model prepared by :func:`vitq.quantize` and calibrated (every quantized op enabled).
        path: the ``.onnx`` file to write (replaced atomically).
        opset: ONNX opset, 13..20.
        batch_dynamic: make the batch dimension of ``images`` and ``logits`` symbolic.
        activation_type: ``"u8"`` (uint8 with zero point 128, U8S8 kernels) or ``"s8"`` (int8); the same
            numbers either way.
        example: an input ``(B, C, H, W)`` for tracing; by default random images of the model's input size.

    Returns:
        ``path``. The graph's input is ``images`` ``(batch, C, H, W)`` float32, its output ``logits``.

    Raises:
        ExportError: naming the op, when a quantizer is not calibrated, not a signed per-tensor/per-channel
            :class:`~vitq.quantizers.uniform.UniformQuantizer`, or has more than 8 bits.
    """
    path, twin, ops = prepare_qdq(qmodel, activation_type, path)
    with scratch_dir(path) as d:
        tmp = Path(d) / "traced.onnx"
        trace_onnx(twin, _example_input(qmodel, example), tmp, opset, batch_dynamic)
        proto = _finish(tmp, path, qmodel, {"kind": "qdq", "activation_type": activation_type, "ops": ops},
                        graph_pass=True)
    log.info("exported %d quantized ops to %s (%d nodes, %s activations)", len(ops), path,
             len(proto.graph.node), activation_type)
    return path


@torch.no_grad()
def export_float_onnx(model: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, batch_dynamic: bool = True,
                      example: torch.Tensor | None = None) -> Path:
    """Export the float model. A vitq-quantized model is exported with quantization disabled (a frozen
    one keeps its weights at their dequantized codes)."""
    from vitq.nn.qops import quantization_disabled

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(path) as d:
        tmp = Path(d) / "traced.onnx"
        if quant_ops(model):
            with quantization_disabled(model):
                trace_onnx(model, _example_input(model, example), tmp, opset, batch_dynamic)
        else:
            trace_onnx(model, _example_input(model, example), tmp, opset, batch_dynamic)
        _finish(tmp, path, model, {"kind": "float"}, graph_pass=False)
    return path


def read_onnx_meta(path: str | Path) -> dict:
    """The vitq metadata stored in an exported file (data config, model spec, config, per-op bits); ``{}`` if none."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == META_KEY:
            try:
                return loads_strict(p.value)
            except ValueError as e:
                raise DataFormatError(f"{path}: the vitq metadata is not valid JSON: {e}") from e
    return {}

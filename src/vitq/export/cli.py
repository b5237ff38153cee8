"""Command-line pieces of export, wired into :mod:`vitq.cli`:

- ``vitq export --out model.onnx`` from a saved model (``--quantized DIR``, plain or packed) or quantizing
  on the fly with the same flags as ``vitq quantize`` (``--model``, ``--bits``, ``--method``, ``--calib``);
  ``--float`` exports the float model instead;
- ``vitq eval --onnx model.onnx``: top-1 in ONNX Runtime on the test images (preprocessing from the
  file's metadata), and agreement with the float model when the file records its spec;
- ``vitq quantize --packed``: save the weights packed at their bit-widths (``vitq eval --quantized``
  and ``vitq export --quantized`` read either format).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from vitq.errors import VitqError

log = logging.getLogger("vitq")


def add_export_parser(sub) -> None:
    """The ``vitq export`` subcommand."""
    from vitq.cli import DEFAULT_CALIB, _add_model_args, _add_quant_args

    x = sub.add_parser("export", help="export a quantized (or float) model to ONNX (QDQ) for ONNX Runtime")
    x.add_argument("--out", required=True, help="the .onnx file to write")
    x.add_argument("--quantized", help="a directory written by vitq quantize (plain or --packed); otherwise "
                                       "the model is quantized on the fly from the flags below")
    _add_model_args(x)
    _add_quant_args(x)
    x.add_argument("--calib", default=None, help=f"calibration images (default with the default model: {DEFAULT_CALIB})")
    x.add_argument("--float", action="store_true", help="export the float model (comparison baseline)")
    x.add_argument("--activation-type", choices=["u8", "s8"], default="u8",
                   help="activations as uint8 with zero point 128 (U8S8 kernels) or int8 (default u8)")
    x.add_argument("--opset", type=int, default=None, help="ONNX opset, 13..20 (default 17)")
    x.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")


def add_export_flags(quantize: argparse.ArgumentParser, evaluate: argparse.ArgumentParser, eval_source) -> None:
    """``vitq quantize --packed`` and ``vitq eval --onnx FILE``."""
    quantize.add_argument("--packed", action="store_true",
                          help="store weights packed at their bit-widths (packed.safetensors) instead of float32")
    eval_source.add_argument("--onnx", help="an ONNX file written by vitq export: evaluate it in ONNX Runtime (the "
                                            "float reference is the model the file records, else --model)")
    evaluate.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")


def _float_model(spec: dict | None):
    from vitq.models.loading import create_model

    if not spec:
        return None
    return create_model(spec["spec"], checkpoint=spec.get("checkpoint"), **spec.get("kwargs", {}))


def _quantize_on_the_fly(args: argparse.Namespace):
    import vitq
    from vitq.cli import DEFAULT_CALIB, DEFAULT_MODEL, _config_from_args, _model_kwargs
    from vitq.data.sources import load_images
    from vitq.models.loading import create_model, model_data_config

    model = create_model(args.model, checkpoint=args.checkpoint, **_model_kwargs(args.model_arg))
    if args.checkpoint:
        model.vitq_model_spec["checkpoint"] = str(Path(args.checkpoint).resolve())
    if args.float:
        return model
    calib_src = args.calib or (DEFAULT_CALIB if args.model == DEFAULT_MODEL else None)
    if calib_src is None:
        raise VitqError("--calib DIR is required to quantize this model (or pass --quantized DIR)")
    calib = load_images(calib_src, model_data_config(model), num=args.num_calib, seed=args.seed)
    torch.manual_seed(args.seed)
    qmodel = vitq.quantize(model, _config_from_args(args))
    vitq.calibrate(qmodel, calib.images)
    return vitq.freeze(qmodel)


def cmd_export(args: argparse.Namespace) -> int:
    from vitq.export.onnx_export import DEFAULT_OPSET, export_float_onnx, export_onnx
    from vitq.export.packing import load_saved

    if args.quantized:
        qmodel = load_saved(args.quantized)
        model = _float_model(qmodel.vitq_info.model_spec) if args.float else qmodel
        if model is None:
            raise VitqError(f"{args.quantized} records no model spec: export its float model with --model")
    else:
        model = _quantize_on_the_fly(args)
    opset = args.opset or DEFAULT_OPSET
    if args.float:
        path = export_float_onnx(model, args.out, opset=opset, batch_dynamic=not args.static_batch)
    else:
        path = export_onnx(model, args.out, opset=opset, batch_dynamic=not args.static_batch,
                           activation_type=args.activation_type)
    print(json.dumps({"onnx": str(path), "kind": "float" if args.float else "qdq",
                      "size_mb": round(Path(path).stat().st_size / 1e6, 3)}, indent=2))
    return 0


def cmd_eval_onnx(args: argparse.Namespace) -> int:
    from vitq.cli import DEFAULT_TEST, _model_kwargs
    from vitq.data.sources import load_images
    from vitq.data.transforms import DataConfig
    from vitq.eval.metrics import agreement, predict, top1
    from vitq.export.onnx_export import read_onnx_meta
    from vitq.export.ort_runtime import OrtModel
    from vitq.models.loading import create_model, model_data_config

    meta = read_onnx_meta(args.onnx)
    # The float reference: the spec the file records, else --model (for files vitq did not write).
    if meta.get("model_spec"):
        model = _float_model(meta["model_spec"])
    else:
        model = create_model(args.model, checkpoint=args.checkpoint, **_model_kwargs(args.model_arg))
    dc = DataConfig.from_dict(meta["data_config"]) if "data_config" in meta else model_data_config(model)
    src = args.data or DEFAULT_TEST
    data = load_images(src, dc, num=args.num_test, seed=args.seed)
    ort_model = OrtModel(args.onnx, threads=args.ort_threads)
    out = ort_model.predict(data.images, batch_size=args.batch_size, progress=True, desc="onnx")
    res: dict = {"onnx": args.onnx, "kind": meta.get("kind", "unknown"), "data": src,
                 "num_test": int(data.images.shape[0]), "ort_threads": args.ort_threads}
    if data.labels is not None:
        res["top1"] = top1(out, data.labels)
    if model is not None:
        ref = predict(model, data.images, batch_size=args.batch_size, progress=True, desc="float")
        res["agreement_with_float"] = agreement(out, ref)
        if data.labels is not None:
            res["top1_float"] = top1(ref, data.labels)
    print(json.dumps(res, indent=2))
    return 0

"""``vitq export --out model.onnx``: a saved model (``--quantized DIR``, plain or packed) or one quantized on
the fly with the same flags as ``vitq quantize`` (``--model``, ``--bits``, ``--method``, ``--calib``) to ONNX
(QDQ) for ONNX Runtime; ``--float`` exports the float model instead (the comparison baseline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitq.cli.argtypes import int_in
from vitq.cli.common import (
    DEFAULT_CALIB,
    add_model_args,
    add_quant_args,
    check_data_sources,
    config_from_args,
    default_calib,
    float_model_from_args,
    load_saved_arg,
)
from vitq.errors import VitqError

EXAMPLES = """examples:
  vitq export --quantized runs/fmnist-vit-liu2021-w8a8 --out model.onnx
  vitq export --float --out float.onnx              the float model, the comparison baseline
  vitq export --bits 8 --method minmax --out w8a8.onnx   quantized on the fly
  vitq eval --onnx model.onnx                        then evaluate it in ONNX Runtime
"""


def add_parser(sub) -> argparse.ArgumentParser:
    x = sub.add_parser("export", help="export a quantized (or float) model to ONNX (QDQ) for ONNX Runtime",
                       description="Export a saved quantized model (--quantized DIR), one quantized on the fly "
                                   "with the flags of vitq quantize, or the float model (--float) to ONNX with "
                                   "QuantizeLinear/DequantizeLinear pairs, for ONNX Runtime.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("--out", required=True, help="the .onnx file to write")
    x.add_argument("--quantized", help="a directory written by vitq quantize (plain or --packed); otherwise "
                                       "the model is quantized on the fly from the flags below")
    add_model_args(x)
    add_quant_args(x)
    x.add_argument("--calib", default=None, help=f"calibration images (default with the default model: {DEFAULT_CALIB})")
    x.add_argument("--float", action="store_true", help="export the float model (comparison baseline)")
    x.add_argument("--activation-type", choices=["u8", "s8"], default="u8",
                   help="activations as uint8 with zero point 128 (U8S8 kernels) or int8 (default u8)")
    # the opsets of vitq.export.onnx_export.OPSETS (a test checks they agree)
    x.add_argument("--opset", type=int_in(13, 20), default=None, help="ONNX opset, 13..20 (default 17)")
    x.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")
    return x


def _quantize_on_the_fly(args: argparse.Namespace):
    import torch

    import vitq
    from vitq.data.sources import load_images
    from vitq.models.loading import model_data_config

    model = float_model_from_args(args)
    if args.float:
        return model
    calib_src = default_calib(args)
    if calib_src is None:
        raise VitqError("--calib DIR is required to quantize this model (or pass --quantized DIR)")
    calib = load_images(calib_src, model_data_config(model), num=args.num_calib, seed=args.seed)
    torch.manual_seed(args.seed)
    qmodel = vitq.quantize(model, config_from_args(args))
    vitq.calibrate(qmodel, calib.images)
    return vitq.freeze(qmodel)


def cmd_export(args: argparse.Namespace) -> int:
    check_data_sources(args, "--calib")  # before anything heavy is imported
    from vitq.export.onnx_export import DEFAULT_OPSET, export_float_onnx, export_onnx
    from vitq.models.loading import float_model_from_spec

    if args.quantized:
        qmodel = load_saved_arg(args.quantized)
        if not args.float:
            model = qmodel
        elif qmodel.vitq_info.model_spec:
            model = float_model_from_spec(qmodel.vitq_info.model_spec)
        else:
            raise VitqError(f"{args.quantized} records no model spec: export its float model with --model")
    else:
        model = _quantize_on_the_fly(args)
    opset = args.opset or DEFAULT_OPSET
    info = getattr(model, "vitq_info", None)
    kind = "float" if args.float else "qdq"
    if not args.float and info is not None and info.adapter == "hf-detr":  # outputs logits and pred_boxes
        kind = "qdq-detr"
        from vitq.export.onnx_detr import export_detr_onnx

        path = export_detr_onnx(model, args.out, opset=opset, activation_type=args.activation_type)
    elif args.float:
        path = export_float_onnx(model, args.out, opset=opset, batch_dynamic=not args.static_batch)
    else:
        path = export_onnx(model, args.out, opset=opset, batch_dynamic=not args.static_batch,
                           activation_type=args.activation_type)
    print(json.dumps({"onnx": str(path), "kind": kind,
                      "size_mb": round(Path(path).stat().st_size / 1e6, 3)}, indent=2))
    return 0

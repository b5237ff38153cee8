"""``vitq eval``: top-1 of a float model (``--model``), of a saved quantized one (``--quantized DIR``, plain
or packed) or of an ONNX file in ONNX Runtime (``--onnx FILE``, preprocessing from the file's metadata), and
the agreement of the latter two with the float model (rebuilt from the spec they record)."""

from __future__ import annotations

import argparse
import json

from vitq.cli.common import DEFAULT_TEST, add_model_args, float_model_from_args


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="top-1 of a float or quantized model, and its agreement with the float model")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--quantized", help="a directory written by vitq quantize")
    add_model_args(e)
    e.add_argument("--data", default=None, help=f"labelled images: ImageFolder DIR or a built-in set (default {DEFAULT_TEST})")
    e.add_argument("--num-test", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--seed", type=int, default=0)
    src.add_argument("--onnx", help="an ONNX file written by vitq export: evaluate it in ONNX Runtime (the "
                                    "float reference is the model the file records, else --model)")
    e.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    return e


def cmd_eval(args: argparse.Namespace) -> int:
    from vitq.data.sources import load_images
    from vitq.eval.metrics import agreement, predict, top1
    from vitq.export.packing import load_saved
    from vitq.models.loading import float_model_from_spec, model_data_config

    if args.onnx:
        return cmd_eval_onnx(args)
    if args.quantized:
        qmodel = load_saved(args.quantized)  # plain or packed
        spec = qmodel.vitq_info.model_spec
        model = float_model_from_spec(spec) if spec else None
        dc = qmodel.vitq_info.data_config
        name = args.quantized
    else:
        qmodel = None
        model = float_model_from_args(args)
        dc = model_data_config(model)
        name = args.model
    src = args.data or DEFAULT_TEST
    data = load_images(src, dc, num=args.num_test, seed=args.seed)
    res: dict = {"model": name, "data": src, "num_test": int(data.images.shape[0])}
    ref = predict(model, data.images, batch_size=args.batch_size, progress=True, desc="float") if model else None
    if ref is not None and data.labels is not None:
        res["top1_float"] = top1(ref, data.labels)
    if qmodel is not None:
        out = predict(qmodel, data.images, batch_size=args.batch_size, progress=True, desc="quantized")
        if data.labels is not None:
            res["top1"] = top1(out, data.labels)
        if ref is not None:
            res["agreement_with_float"] = agreement(out, ref)
    print(json.dumps(res, indent=2))
    return 0


def cmd_eval_onnx(args: argparse.Namespace) -> int:
    """``vitq eval --onnx FILE``: top-1 in ONNX Runtime, and the agreement with the float reference (the model
    the file records, else ``--model`` for files vitq did not write)."""
    from vitq.data.sources import load_images
    from vitq.data.transforms import DataConfig
    from vitq.eval.metrics import agreement, predict, top1
    from vitq.export.onnx_export import read_onnx_meta
    from vitq.export.ort_runtime import OrtModel
    from vitq.models.loading import float_model_from_spec, model_data_config

    meta = read_onnx_meta(args.onnx)
    model = float_model_from_spec(meta["model_spec"]) if meta.get("model_spec") else float_model_from_args(args)
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

"""``vitq eval``: top-1 of a float model (``--model``), of a saved quantized one (``--quantized DIR``, plain
or packed) or of an ONNX file in ONNX Runtime (``--onnx FILE``, preprocessing from the file's metadata), and
the agreement of the latter two with the float model (rebuilt from the spec they record).

Under ``torchrun`` each rank evaluates its shard of the images (``--model`` / ``--quantized``; ONNX Runtime
runs in one process): top-1 from the correct counts summed over ranks, the agreement from the per-image
predictions gathered in order, printed by rank 0; the numbers are those of one process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitq.cli.argtypes import positive_int
from vitq.cli.common import (
    DEFAULT_TEST,
    add_model_args,
    add_seed_arg,
    check_data_sources,
    eval_data_for,
    float_model_from_args,
    load_saved_arg,
)
from vitq.errors import DataFormatError

EXAMPLES = f"""examples:
  vitq eval                                        the float default model on {DEFAULT_TEST}
  vitq eval --quantized runs/fmnist-vit-liu2021-w8a8 --num-test 500
  vitq eval --onnx model.onnx --ort-threads 4
  vitq eval --model timm:vit_small_patch16_224 --checkpoint vit_s.safetensors --data val_images/
  vitq eval --model vitq:detr-synth --data detr-synth:test      COCO mAP of a detector (or coco:DIR)
"""


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="top-1 of a float or quantized model, and its agreement with the float model",
                       description="Evaluate a float model (--model), a saved quantized model (--quantized DIR) "
                                   "or an ONNX file in ONNX Runtime (--onnx FILE) on labelled images: top-1, and "
                                   "the agreement of the quantized predictions with the float model's.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = e.add_mutually_exclusive_group()
    src.add_argument("--quantized", help="a directory written by vitq quantize")
    add_model_args(e)
    e.add_argument("--data", default=None, help=f"labelled images: ImageFolder DIR or a built-in set (default {DEFAULT_TEST})")
    e.add_argument("--num-test", type=positive_int, default=None,
                   help="evaluate on a random sample of this many images (default all)")
    e.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_seed_arg(e)
    src.add_argument("--onnx", help="an ONNX file written by vitq export: evaluate it in ONNX Runtime (the "
                                    "float reference is the model the file records, else --model)")
    e.add_argument("--ort-threads", type=positive_int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    return e


def cmd_eval(args: argparse.Namespace) -> int:
    check_data_sources(args, "--data")  # before anything heavy is imported
    from vitq import distributed
    from vitq.data.sources import load_images
    from vitq.eval.sharded import agreement_all, predict_shard, top1_all
    from vitq.models.loading import float_model_from_spec, model_data_config

    if args.onnx:
        if distributed.is_distributed():
            raise DataFormatError("--onnx runs ONNX Runtime in one process: run it without torchrun")
        return cmd_eval_onnx(args)
    if args.quantized:
        qmodel = load_saved_arg(args.quantized)  # plain or packed
        spec = qmodel.vitq_info.model_spec
        model = float_model_from_spec(spec) if spec else None
        dc = qmodel.vitq_info.data_config
        name = args.quantized
    else:
        qmodel = None
        model = float_model_from_args(args)
        dc = model_data_config(model)
        name = args.model
    src = eval_data_for(dc, args.data, DEFAULT_TEST)
    if src.startswith(("coco:", "detr-synth:")):  # a detector: COCO mAP (vitq.eval.detection), one process
        from vitq.eval.detection import detection_summary

        data = load_images(src, dc, num=args.num_test, seed=args.seed)
        res: dict = {"model": name, "data": src, "num_test": int(data.images.shape[0])}
        res.update(detection_summary(model, qmodel, data, batch_size=args.batch_size))
        print(json.dumps(res, indent=2))
        return 0
    data = load_images(src, dc, num=args.num_test, seed=args.seed, shard=True)  # this rank's block (all: 1 process)
    res = {"model": name, "data": src, "num_test": data.num_total}
    distributed.check_same_model(qmodel if qmodel is not None else model)
    device = distributed.local_device(getattr(args, "device", "cpu"))
    for m in (model, qmodel):
        if m is not None:
            m.to(device)
    # each rank its shard of the images; counts and predictions combined over ranks (vitq.eval.sharded)
    ref = (predict_shard(model, data.images, batch_size=args.batch_size, progress=True, desc="float", sharded=True)
           if model else None)
    if ref is not None and data.labels is not None:
        res["top1_float"] = top1_all(ref, data.labels)
    if qmodel is not None:
        out = predict_shard(qmodel, data.images, batch_size=args.batch_size, progress=True, desc="quantized",
                            sharded=True)
        if data.labels is not None:
            res["top1"] = top1_all(out, data.labels)
        if ref is not None:
            res["agreement_with_float"] = agreement_all(out, ref)
    if distributed.is_distributed():
        res["world_size"] = distributed.world_size()
    with distributed.main_first("printing the results") as writer:
        if writer:
            print(json.dumps(res, indent=2))
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _onnx_meta(path: str) -> dict:
    """The vitq metadata of ``--onnx FILE``; a missing or unparseable file is one error naming it."""
    from vitq.export.onnx_export import read_onnx_meta

    if not Path(path).is_file():
        raise DataFormatError(f"--onnx {path}: no such file")
    try:
        return read_onnx_meta(path)
    except ImportError:
        raise
    except Exception as e:  # protobuf's DecodeError, onnx's errors, a metadata entry that is not JSON
        raise DataFormatError(f"--onnx {path} is not a readable ONNX file: {_first_line(e)}") from e


def cmd_eval_onnx(args: argparse.Namespace) -> int:
    """``vitq eval --onnx FILE``: top-1 in ONNX Runtime, and the agreement with the float reference (the model
    the file records, else ``--model`` for files vitq did not write)."""
    from vitq.data.sources import load_images
    from vitq.data.transforms import DataConfig
    from vitq.eval.metrics import agreement, predict, top1
    from vitq.export.ort_runtime import OrtModel
    from vitq.models.loading import float_model_from_spec, model_data_config

    meta = _onnx_meta(args.onnx)
    model = float_model_from_spec(meta["model_spec"]) if meta.get("model_spec") else float_model_from_args(args)
    dc = DataConfig.from_dict(meta["data_config"]) if "data_config" in meta else model_data_config(model)
    src = eval_data_for(dc, args.data, DEFAULT_TEST)
    data = load_images(src, dc, num=args.num_test, seed=args.seed)
    if meta.get("kind") == "qdq-detr":  # a DETR (vitq.export.onnx_detr): COCO mAP in ONNX Runtime
        from vitq.eval.detection import detection_summary, evaluate_detection
        from vitq.export.onnx_detr import OrtDetector

        if getattr(data, "gt", None) is None:
            raise DataFormatError(f"--onnx {args.onnx} is a detector: give detection data (coco:..., detr-synth:...)")
        m = evaluate_detection(OrtDetector(args.onnx, threads=args.ort_threads), data, batch_size=args.batch_size,
                               progress=True, desc="onnx")
        res = {"onnx": args.onnx, "kind": "qdq-detr", "data": src, "ort_threads": args.ort_threads,
               **detection_summary(model, None, data, batch_size=args.batch_size),
               "map": round(m.map, 4), "map50": round(m.map50, 4)}
        print(json.dumps(res, indent=2))
        return 0
    try:
        ort_model = OrtModel(args.onnx, threads=args.ort_threads)
    except ImportError:
        raise
    except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph ... have no common base
        raise DataFormatError(f"--onnx {args.onnx}: ONNX Runtime cannot load it: {_first_line(e)}") from e
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

"""``vitq quantize``: quantize and calibrate a model, save it, evaluate it and write its report.

With no arguments it runs the embedded default: the Fashion-MNIST ViT shipped with vitq, calibrated on 32
of its shipped train images with the Liu et al. method at W8A8, evaluated on the 2,000 shipped test images.
Mixed precision (``--mp``, ``--plan``) comes from :mod:`vitq.cli.mp_search`, the report (``--no-report``)
from :mod:`vitq.cli.report`; ``--packed`` saves the weights packed at their bit-widths.

Under ``torchrun`` (:mod:`vitq.distributed`) every rank calibrates and evaluates its shard of the images
and rank 0 alone checks ``--out``, saves, prints the summary and writes the report; the saved model is the
one a single process makes. A mixed-precision search (``--mp``) runs on all the calibration images on every
rank (replicated), and a data-parallel calibration does not resume.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from vitq.cli.argtypes import positive_int
from vitq.cli.common import (
    DEFAULT_CALIB,
    DEFAULT_MODEL,
    DEFAULT_TEST,
    add_model_args,
    add_quant_args,
    check_data_sources,
    config_from_args,
    default_calib,
    eval_data_for,
    float_model_from_args,
    model_kwargs,
)
from vitq.cli.mp_search import add_mp_quantize_args, apply_mp_args
from vitq.cli.report import add_report_flag, report_after_quantize
from vitq.errors import VitqError

EXAMPLES = f"""examples:
  vitq quantize                      the embedded default: {DEFAULT_MODEL}, W8A8, liu2021 (make demo)
  vitq quantize --bits 4 --method mptq --out runs/mptq-w4a4
  vitq quantize --model timm:vit_small_patch16_224 --checkpoint vit_s.safetensors --calib calib_images/ \\
      --eval-data val_images/ --w-bits 6 --a-bits 8 --packed --out runs/vit-s-w6a8
"""


def add_parser(sub) -> argparse.ArgumentParser:
    q = sub.add_parser("quantize", help="quantize and calibrate a model, save it (and evaluate it)",
                       description="Quantize a model, calibrate it on a few images, save it into --out with its "
                                   "report, and evaluate it against the float model. With no arguments: the "
                                   f"Fashion-MNIST ViT shipped with vitq ({DEFAULT_MODEL}) at W8A8, calibrated "
                                   f"on {DEFAULT_CALIB}, evaluated on {DEFAULT_TEST}.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(q)
    add_quant_args(q)
    q.add_argument("--calib", default=None, help=f"calibration images: DIR or a built-in set (default with the "
                                                  f"default model: {DEFAULT_CALIB})")
    q.add_argument("--eval-data", default=None, help=f"labelled test images to evaluate after quantizing "
                                                      f"(default with the default model: {DEFAULT_TEST})")
    q.add_argument("--num-test", type=positive_int, default=None, help="evaluate on this many test images (default all)")
    q.add_argument("--out", default=None, help="output directory (default runs/<model>-<method>-w<b>a<b>); an "
                                               "existing non-empty directory that is not a vitq output is refused, "
                                               "an earlier vitq output is replaced only with --overwrite")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an earlier vitq output at --out (atomically: the old one stays until the new one "
                        "is complete)")
    add_mp_quantize_args(q)  # --mp, --budget-mb, --plan, --candidates, --granularity, --msa-feature
    add_report_flag(q)  # --no-report
    q.add_argument("--packed", action="store_true",
                   help="store weights packed at their bit-widths (packed.safetensors) instead of float32")
    q.add_argument("--strict", action="store_true",
                   help="fail when the model computes an op vitq cannot quantize (an attention product it cannot "
                        "capture, a Linear used outside its module) instead of leaving it float with a warning")
    q.add_argument("--no-resume", action="store_true", help="start calibration over instead of resuming an "
                   "interrupted one (its state is kept after each unit in .<out-name>.resume beside --out)")
    return q


def cmd_quantize(args: argparse.Namespace) -> int:
    check_data_sources(args, "--calib", "--eval-data")  # before anything heavy is imported
    model_kwargs(args.model_arg)  # a malformed --model-arg is named before the output path is looked at
    import torch

    import vitq
    from vitq import distributed
    from vitq.calibration.checkpoint import CalibrationCheckpoint, checkpoint_path_for
    from vitq.data.sources import load_images
    from vitq.eval.sharded import agreement_all, predict_shard, sqnr_db_all, top1_all
    from vitq.export.packing import save_packed
    from vitq.export.serialization import check_output_path, save_quantized
    from vitq.models.loading import model_data_config

    config = config_from_args(args)
    calib_src = default_calib(args)
    if calib_src is None:
        raise VitqError("--calib DIR is required for this model (a folder of calibration images)")
    tag = args.model.split(":", 1)[1].replace("/", "_")
    out = Path(args.out or f"runs/{tag}-{config.method}-w{config.w_bits}a{config.a_bits}")
    if distributed.is_main():  # rank 0 writes (the other ranks may not even see its file system)
        check_output_path(out, args.overwrite)  # before any work: never destroy input, never lose a calibration
    model = float_model_from_args(args).to(distributed.local_device(getattr(args, "device", "cpu")))
    distributed.check_same_model(model)
    dc = model_data_config(model)
    eval_src = eval_data_for(dc, args.eval_data, DEFAULT_TEST if args.model == DEFAULT_MODEL else None)
    calib = load_images(calib_src, dc, num=args.num_calib, seed=args.seed)
    torch.manual_seed(args.seed)
    config, mp_info = apply_mp_args(args, model, calib.images, config)  # --mp search or --plan file
    qmodel = vitq.quantize(model, config, strict=args.strict)
    coverage = vitq.get_quant_info(qmodel).coverage
    resume = (CalibrationCheckpoint(checkpoint_path_for(out), resume=not args.no_resume, keep=True)  # until saved
              if not distributed.is_distributed() else None)  # a data-parallel run does not resume
    report = vitq.calibrate(qmodel, distributed.shard(calib.images, "calibration images"), checkpoint=resume,
                            progress=distributed.is_main())
    vitq.freeze(qmodel)
    # with a mixed-precision plan the uniform --bits only set the budget: report the bits used (bits_min/max)
    bits = ({"base_bits": config.w_bits} if mp_info.get("mixed_precision")
            else {"w_bits": config.w_bits, "a_bits": config.a_bits})
    summary = {"model": args.model, "method": config.method, **bits,
               "num_calib": int(calib.images.shape[0]), "calib": calib_src, "calib_seconds": round(report.seconds, 2),
               **mp_info, "quantized_ops": {k: f"{coverage[k]['quantized']}/{coverage[k]['total']}"
                                            for k in ("linear", "conv", "attn_matmul")}}
    if coverage.get("kept_float"):
        summary["kept_float"] = coverage["kept_float"]
    if coverage.get("uncaptured"):
        summary["not_quantized"] = coverage["uncaptured"]
    if eval_src and eval_src.startswith(("coco:", "detr-synth:")):  # a detector: COCO mAP (vitq.eval.detection)
        from vitq.eval.detection import detection_summary

        test = load_images(eval_src, dc, num=args.num_test, seed=args.seed)
        summary.update(detection_summary(model, qmodel, test))
    elif eval_src:
        # each rank loads and predicts its block; counts and predictions combined over ranks (vitq.eval.sharded)
        test = load_images(eval_src, dc, num=args.num_test, seed=args.seed, shard=True)
        ref = predict_shard(model, test.images, progress=True, desc="float", sharded=True)
        out_q = predict_shard(qmodel, test.images, progress=True, desc="quantized", sharded=True)
        sqnr = sqnr_db_all(ref, out_q)  # inf when the outputs are identical: JSON has no inf, write null
        summary.update(num_test=test.num_total, agreement=agreement_all(out_q, ref),
                       logits_sqnr_db=sqnr if math.isfinite(sqnr) else None)
        if test.labels is not None:
            summary.update(top1_float=top1_all(ref, test.labels), top1=top1_all(out_q, test.labels))
    if distributed.is_distributed():
        summary["world_size"] = distributed.world_size()
    save = save_packed if args.packed else save_quantized  # --packed: weights stored at their bit-widths
    with distributed.main_first("saving " + str(out)) as writer:  # every rank done and well, then rank 0 alone
        if writer:
            save(qmodel.cpu(), out, extra={"summary": summary, "calibration": report.to_dict()},
                 overwrite=args.overwrite)
            if resume is not None:
                resume.remove()
            print(json.dumps(summary, indent=2))  # the save itself is logged (vitq.export), once
            if not getattr(args, "no_report", False):  # report.md + plots (vitq.report.run_report)
                report_after_quantize(qmodel, model.cpu(), calib.images, out, summary, report.to_dict())
    return 0

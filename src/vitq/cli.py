"""Command line: ``vitq quantize``, ``vitq eval`` (and more subcommands as they land).

With no arguments, ``vitq quantize`` runs the embedded default: the Fashion-MNIST ViT shipped with
vitq, calibrated on 32 of its shipped train images with the Liu et al. method at W8A8, evaluated on
the 2,000 shipped test images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from vitq.errors import VitqError

log = logging.getLogger("vitq")

DEFAULT_MODEL = "vitq:fmnist-vit"
DEFAULT_CALIB = "fmnist-subset:calib"
DEFAULT_TEST = "fmnist-subset:test"


def _add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", default=None if required else DEFAULT_MODEL,
                   help="timm:NAME, hf:DIR or vitq:NAME (default: %(default)s)")
    p.add_argument("--checkpoint", help="local weights for the architecture (safetensors or torch state dict)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture argument, repeatable, VALUE parsed as JSON (e.g. img_size=112 num_classes=10)")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that only flags given on the command line override --config; unset values
    # fall back to the config file, then to QuantConfig's defaults (W8A8, liu2021, C=100, 20 rounds).
    from vitq.recipes import recipe_names

    p.add_argument("--bits", type=int, help="weight and activation bits, 2..16 (default 8)")
    p.add_argument("--w-bits", type=int, help="weight bits (overrides --bits)")
    p.add_argument("--a-bits", type=int, help="activation bits (overrides --bits)")
    p.add_argument("--method", choices=recipe_names(), help="calibration method, a registered recipe (default liu2021)")
    p.add_argument("--num-calib", type=int, default=32, help="calibration images (default 32)")
    p.add_argument("--num-candidates", type=int, help="C, interval candidates (default 100)")
    p.add_argument("--max-iters", type=int, help="alternating search rounds at most (default 20)")
    p.add_argument("--per-channel", action="store_true", default=None, help="per-output-channel weight intervals")
    p.add_argument("--quantize-head", action="store_true", default=None, help="quantize the classifier head too")
    p.add_argument("--config", help="a QuantConfig JSON file; flags given explicitly override it")
    p.add_argument("--seed", type=int, default=0)
    from vitq.methods.extended_cli import add_extended_args

    add_extended_args(p)  # --sqb, --no-sqb-shift, --smoothquant-alpha, --sqb-proj, --optm, --optm-softmax, --fully-quantized


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitq", description="Post-training quantization of vision transformers.")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = ap.add_subparsers(dest="command")

    q = sub.add_parser("quantize", help="quantize and calibrate a model, save it (and evaluate it)")
    _add_model_args(q)
    _add_quant_args(q)
    q.add_argument("--calib", default=None, help=f"calibration images: DIR or a built-in set (default with the "
                                                  f"default model: {DEFAULT_CALIB})")
    q.add_argument("--eval-data", default=None, help=f"labelled test images to evaluate after quantizing "
                                                      f"(default with the default model: {DEFAULT_TEST})")
    q.add_argument("--num-test", type=int, default=None, help="evaluate on this many test images (default all)")
    q.add_argument("--out", default=None, help="output directory (default runs/<model>-<method>-w<b>a<b>)")
    from vitq.mp.cli import add_mp_quantize_args

    add_mp_quantize_args(q)  # --mp, --budget-mb, --plan, --candidates, --granularity, --msa-feature
    from vitq.report.cli import add_report_flag, add_report_parser

    add_report_flag(q)  # --no-report

    e = sub.add_parser("eval", help="top-1 of a float or quantized model, and its agreement with the float model")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--quantized", help="a directory written by vitq quantize")
    _add_model_args(e)
    e.add_argument("--data", default=None, help=f"labelled images: ImageFolder DIR or a built-in set (default {DEFAULT_TEST})")
    e.add_argument("--num-test", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--seed", type=int, default=0)
    from vitq.export.cli import add_export_flags, add_export_parser

    add_export_flags(q, e, src)  # quantize --packed; eval --onnx, --ort-threads
    add_export_parser(sub)  # vitq export
    b = sub.add_parser("bench", help="the paper's Table 1 / Table 3 on the real models, into benchmarks/results")
    b.add_argument("--model", action="append", choices=["fmnist-vit", "dinov2-s14-fmnist"],
                   help="benchmark model, repeatable (default: both)")
    b.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    b.add_argument("--num-calib", type=int, nargs="+", default=[32, 128])
    b.add_argument("--methods", nargs="+", default=None, help="default: minmax percentile easyquant mse liu2021")
    b.add_argument("--no-ablation", action="store_true")
    b.add_argument("--num-test", type=int, default=None, help="test images (default: the whole test set)")
    b.add_argument("--quick", action="store_true", help="500 test images, 32 calibration images: for iteration")
    b.add_argument("--search", default="fast", choices=["fast", "reference"])
    b.add_argument("--out", default="benchmarks/results")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--peers", action="store_true",
                   help="the whole comparison in one command: adds the mptq, ptq4vit and repq-vit recipes to the "
                        "methods at every --bits, and ONNX Runtime's quantize_static (MinMax, Percentile, Entropy) "
                        "at W8A8")
    from vitq.methods.extended_cli import add_extended_args

    add_extended_args(b)  # MPTQ-ViT flags for every bench run (--sqb, --optm, --fully-quantized, ...)
    b.add_argument("--mp", nargs="+", default=None, choices=["nuclear", "nuclear-output", "hessian", "greedy"],
                   help="mixed-precision rows instead (vitq.bench.mp_bench): one per allocation method and --bits")
    b.add_argument("--budget-mb", type=float, nargs="+", default=[], help="with --mp: explicit budgets too (MB)")
    b.add_argument("--greedy-images", type=int, default=None,
                   help="with --mp greedy: measure the greedy loss on the first N calibration images (default all)")
    b.add_argument("--no-uniform", action="store_true",
                   help="with --mp: do not run the uniform rows again; the tables compare with those already in the "
                        "results file (so a --peers table keeps its own rows)")
    from vitq.mp.cli import add_mp_search_parser

    add_mp_search_parser(sub)  # vitq mp-search
    add_report_parser(sub)  # vitq report RUN_DIR | --bench RESULTS_JSON
    return ap


def cmd_bench(args: argparse.Namespace) -> int:
    from vitq.bench.runner import TABLE1_METHODS, run_bench
    from vitq.methods.extended_cli import extended_overrides

    if args.mp:
        from vitq.mp.cli import cmd_bench_mp

        return cmd_bench_mp(args)
    for name in args.model or ["fmnist-vit", "dinov2-s14-fmnist"]:
        run_bench(name, bits=tuple(args.bits), methods=tuple(args.methods or TABLE1_METHODS),
                  ablation=not args.no_ablation, num_calib=(32,) if args.quick else tuple(args.num_calib),
                  num_test=500 if args.quick and args.num_test is None else args.num_test, out_dir=args.out,
                  seed=args.seed, search=args.search, config_overrides=extended_overrides(args),
                  peers=args.peers)
        print(f"wrote {args.out}/{name}.json and {name}.md")
    return 0


def _model_kwargs(items: list[str]) -> dict:
    kwargs = {}
    for item in items:
        if "=" not in item:
            raise VitqError(f"--model-arg {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            kwargs[k] = json.loads(v)
        except json.JSONDecodeError:
            kwargs[k] = v
    return kwargs


def _config_from_args(args: argparse.Namespace):
    from vitq.config import QuantConfig
    from vitq.methods.extended_cli import extended_config_fields

    base = QuantConfig.from_json(args.config).to_dict() if args.config else {}
    given = {
        "w_bits": args.w_bits if args.w_bits is not None else args.bits,
        "a_bits": args.a_bits if args.a_bits is not None else args.bits,
        "method": args.method,
        "num_candidates": args.num_candidates,
        "max_iters": args.max_iters,
        "per_channel_weights": args.per_channel,
        "quantize_head": args.quantize_head,
        "seed": args.seed,
        **extended_config_fields(args),
    }
    return QuantConfig.from_dict({**base, **{k: v for k, v in given.items() if v is not None}})


def cmd_quantize(args: argparse.Namespace) -> int:
    import vitq
    from vitq.data.sources import load_images
    from vitq.eval.metrics import agreement, predict, sqnr_db, top1
    from vitq.export.serialization import save_quantized
    from vitq.models.loading import create_model, model_data_config

    config = _config_from_args(args)
    is_default = args.model == DEFAULT_MODEL
    calib_src = args.calib or (DEFAULT_CALIB if is_default else None)
    if calib_src is None:
        raise VitqError("--calib DIR is required for this model (a folder of calibration images)")
    eval_src = args.eval_data or (DEFAULT_TEST if is_default else None)
    model = create_model(args.model, checkpoint=args.checkpoint, **_model_kwargs(args.model_arg))
    if args.checkpoint:
        model.vitq_model_spec["checkpoint"] = str(Path(args.checkpoint).resolve())
    dc = model_data_config(model)
    calib = load_images(calib_src, dc, num=args.num_calib, seed=args.seed)
    torch.manual_seed(args.seed)
    from vitq.mp.cli import apply_mp_args

    config, mp_info = apply_mp_args(args, model, calib.images, config)  # --mp search or --plan file
    qmodel = vitq.quantize(model, config)
    report = vitq.calibrate(qmodel, calib.images)
    vitq.freeze(qmodel)
    tag = args.model.split(":", 1)[1].replace("/", "_")
    out = Path(args.out or f"runs/{tag}-{config.method}-w{config.w_bits}a{config.a_bits}")
    summary = {"model": args.model, "method": config.method, "w_bits": config.w_bits, "a_bits": config.a_bits,
               "num_calib": int(calib.images.shape[0]), "calib": calib_src, "calib_seconds": round(report.seconds, 2),
               **mp_info}
    if eval_src:
        test = load_images(eval_src, dc, num=args.num_test, seed=args.seed)
        ref = predict(model, test.images, progress=True, desc="float")
        out_q = predict(qmodel, test.images, progress=True, desc="quantized")
        summary.update(num_test=int(test.images.shape[0]), agreement=agreement(out_q, ref),
                       logits_sqnr_db=sqnr_db(ref, out_q))
        if test.labels is not None:
            summary.update(top1_float=top1(ref, test.labels), top1=top1(out_q, test.labels))
    from vitq.export.packing import save_packed

    save = save_packed if args.packed else save_quantized  # --packed: weights stored at their bit-widths
    save(qmodel, out, extra={"summary": summary, "calibration": report.to_dict()})
    print(json.dumps(summary, indent=2))
    print(f"saved quantized model to {out}")
    if not getattr(args, "no_report", False):  # report.md + plots (vitq.report.run_report)
        from vitq.report.cli import report_after_quantize

        report_after_quantize(qmodel, model, calib.images, out, summary, report.to_dict())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vitq.data.sources import load_images
    from vitq.eval.metrics import agreement, predict, top1
    from vitq.export.packing import load_saved
    from vitq.models.loading import create_model, model_data_config

    if args.onnx:
        from vitq.export.cli import cmd_eval_onnx

        return cmd_eval_onnx(args)
    if args.quantized:
        qmodel = load_saved(args.quantized)  # plain or packed
        spec = qmodel.vitq_info.model_spec or {}
        model = create_model(spec["spec"], checkpoint=spec.get("checkpoint"), **spec.get("kwargs", {})) if spec else None
        dc = qmodel.vitq_info.data_config
        name = args.quantized
    else:
        qmodel = None
        model = create_model(args.model, checkpoint=args.checkpoint, **_model_kwargs(args.model_arg))
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


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        args = ap.parse_args(["quantize", *(argv or [])])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        from vitq.export.cli import cmd_export
        from vitq.mp.cli import cmd_mp_search
        from vitq.report.cli import cmd_report

        rc = {"quantize": cmd_quantize, "eval": cmd_eval, "bench": cmd_bench,
              "mp-search": cmd_mp_search, "export": cmd_export, "report": cmd_report}[args.command](args)
    except VitqError as e:
        log.error("%s", e)
        return 2
    log.info("done in %.1fs", time.perf_counter() - t0)
    return rc


if __name__ == "__main__":
    sys.exit(main())

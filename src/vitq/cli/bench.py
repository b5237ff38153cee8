"""``vitq bench``: the paper's Table 1 / Table 3 on the real models into ``benchmarks/results``
(:mod:`vitq.bench.runner`); with ``--mp ...`` the mixed-precision rows instead (:mod:`vitq.bench.mp_bench`)."""

from __future__ import annotations

import argparse

from vitq.cli.argtypes import bits, positive_float, positive_int
from vitq.cli.common import add_seed_arg
from vitq.cli.options import add_extended_args, check_sqb_shift, extended_overrides

EXAMPLES = """examples:
  vitq bench --quick --model fmnist-vit                     a few minutes: 500 test images, 32 calibration images
  vitq bench --model fmnist-vit --bits 4 --methods liu2021 mptq --no-ablation
  vitq bench --peers                                        vitq's methods beside the peers' and ONNX Runtime's
  vitq bench --mp nuclear hessian --bits 6 5                mixed-precision rows
  vitq bench --model detr-synth                             Table 2 analog: DETR, mAP on the synthetic test split
  vitq report --bench benchmarks/results/fmnist-vit.json    then the report with its plots
"""


def add_parser(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="the paper's Table 1 / Table 3 on the real models, into benchmarks/results",
                       description="Run the paper's Table 1 (every method at every bit-width) and Table 3 (the "
                                   "ablation) on the benchmark models, merging one row per run into "
                                   "<out>/<model>.json and a markdown table <out>/<model>.md. Needs the full "
                                   "Fashion-MNIST test set (make bench-setup).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--model", action="append", choices=["fmnist-vit", "dinov2-s14-fmnist", "detr-synth"],
                   help="benchmark model, repeatable (default: fmnist-vit and dinov2-s14-fmnist); detr-synth is the "
                        "Table 2 analog (DETR, COCO mAP; vitq.bench.detection)")
    b.add_argument("--quantize-backbone", action="store_true",
                   help="detr-synth: quantize the CNN backbone too (off by default, as Liu et al.)")
    b.add_argument("--bits", type=bits, nargs="+", default=[8, 6, 4],
                   help="bit-widths W=A of the rows (default 8 6 4)")
    b.add_argument("--num-calib", type=positive_int, nargs="+", default=None,
                   help="calibration set sizes, one set of rows each (default 32 128; detr-synth 32; with --mp the "
                        "first)")
    b.add_argument("--methods", nargs="+", default=None, help="default: minmax percentile easyquant mse liu2021")
    b.add_argument("--no-ablation", action="store_true",
                   help="skip the Table 3 ablation rows (liu2021-sim, liu2021-sim+rank, liu2021-sim+bc)")
    b.add_argument("--num-test", type=positive_int, default=None, help="test images (default: the whole test set)")
    b.add_argument("--quick", action="store_true", help="500 test images, 32 calibration images: for iteration")
    b.add_argument("--search", default="fast", choices=["fast", "reference"],
                   help="the interval search implementation: fast (batched, the default) or reference (the "
                        "paper's loops, slow; for checking)")
    b.add_argument("--out", default="benchmarks/results",
                   help="results directory: <model>.json (rows merged in) and <model>.md (default %(default)s)")
    add_seed_arg(b)
    b.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="detr-synth: calibrate each configuration once per seed; its rows hold the mean mAP, its "
                        "standard deviation and the per-seed figures (default: --seed). Classifier rows over "
                        "several seeds: benchmarks/lowbit.py --seeds")
    b.add_argument("--peers", action="store_true",
                   help="the whole comparison in one command: adds the mptq, ptq4vit and repq-vit recipes to the "
                        "methods at every --bits, and ONNX Runtime's quantize_static (MinMax, Percentile, Entropy) "
                        "at W8A8")
    add_extended_args(b)  # MPTQ-ViT flags for every bench run (--sqb, --optm, --fully-quantized, ...)
    b.add_argument("--mp", nargs="+", default=None, choices=["nuclear", "nuclear-output", "hessian", "greedy"],
                   help="mixed-precision rows instead (vitq.bench.mp_bench): one per allocation method and --bits")
    b.add_argument("--budget-mb", type=positive_float, nargs="+", default=[],
                   help="with --mp: explicit budgets too (MB)")
    b.add_argument("--greedy-images", type=positive_int, default=None,
                   help="with --mp greedy: measure the greedy loss on the first N calibration images (default all)")
    b.add_argument("--no-uniform", action="store_true",
                   help="with --mp: do not run the uniform rows again; the tables compare with those already in the "
                        "results file (so a --peers table keeps its own rows)")
    return b


def check_methods(args: argparse.Namespace, methods: list[str], origin: dict[str, str] | None = None) -> None:
    """Before the first run: each method exists and takes the flags given (``--sqb``, ``--no-sqb-shift``,
    ``--sqb-proj`` ...), instead of an error after hours of rows. ``origin`` names where a method came
    from when not ``--methods`` (``--peers``, the ablation)."""
    from vitq.config import QuantConfig
    from vitq.errors import ConfigError

    check_sqb_shift(args, methods)
    overrides = extended_overrides(args)
    for method in dict.fromkeys(methods):
        try:
            QuantConfig(method=method, **overrides)
        except ConfigError as e:
            where = (origin or {}).get(method, "--methods")
            raise ConfigError(f"{where} {method}: {e}") from e


def cmd_bench(args: argparse.Namespace) -> int:
    from vitq import distributed
    from vitq.bench.runner import ABLATION_METHODS, TABLE1_METHODS, run_bench, with_peer_methods
    from vitq.errors import ConfigError

    if args.seeds and not (args.model and "detr-synth" in args.model and not args.mp):
        raise ConfigError("--seeds applies to --model detr-synth's table; classifier rows over several calibration "
                          "seeds: python benchmarks/lowbit.py --seeds ...")
    if args.mp:
        if distributed.is_distributed():
            raise ConfigError("vitq bench --mp runs in one process: run it without torchrun")
        return cmd_bench_mp(args)
    if args.model and "detr-synth" in args.model:
        return cmd_bench_detection(args)
    methods = list(args.methods or TABLE1_METHODS)
    peers = [m for m in with_peer_methods(tuple(methods)) if m not in methods] if args.peers else []
    ablation = [] if args.no_ablation else [m for m in ABLATION_METHODS if m not in methods + peers]
    check_methods(args, [*methods, *peers, *ablation],
                  origin={**dict.fromkeys(peers, "--peers adds"),
                          **dict.fromkeys(ablation, "the ablation (--no-ablation skips it) runs")})
    for name in args.model or ["fmnist-vit", "dinov2-s14-fmnist"]:
        run_bench(name, bits=tuple(args.bits), methods=tuple(args.methods or TABLE1_METHODS),
                  ablation=not args.no_ablation, num_calib=(32,) if args.quick else tuple(args.num_calib or (32, 128)),
                  num_test=500 if args.quick and args.num_test is None else args.num_test, out_dir=args.out,
                  seed=args.seed, search=args.search, config_overrides=extended_overrides(args),
                  peers=args.peers)
        if distributed.is_main():
            print(f"wrote {args.out}/{name}.json and {name}.md")
    return 0


def cmd_bench_detection(args: argparse.Namespace) -> int:
    """``vitq bench --model detr-synth``: the Table 2 analog (:mod:`vitq.bench.detection`); other models in the
    same call are an error (their tables differ)."""
    from vitq.bench.detection import TABLE2_METHODS, run_detection_bench
    from vitq.errors import ConfigError

    if set(args.model) != {"detr-synth"}:
        raise ConfigError("--model detr-synth runs the detection benchmark: give it alone")
    methods = list(args.methods or TABLE2_METHODS)
    check_methods(args, methods)
    for num_calib in [32] if args.quick else args.num_calib or [32]:
        run_detection_bench("detr-synth", bits=tuple(args.bits), methods=tuple(methods), num_calib=num_calib,
                            num_test=200 if args.quick and args.num_test is None else args.num_test, out_dir=args.out,
                            seeds=tuple(args.seeds or (args.seed,)), quantize_backbone=args.quantize_backbone,
                            config_overrides=extended_overrides(args))
    print(f"wrote {args.out}/detr-synth.json and detr-synth.md")
    return 0


def cmd_bench_mp(args: argparse.Namespace) -> int:
    """``vitq bench --mp ...``: mixed-precision rows for each bench model (see :mod:`vitq.bench.mp_bench`)."""
    from vitq.bench.mp_bench import run_mp_rows

    methods = args.methods or ["liu2021"]
    check_methods(args, methods)
    for name in args.model or ["fmnist-vit"]:
        for method in methods:
            run_mp_rows(name, mp_methods=tuple(args.mp), bits=tuple(args.bits), method=method,
                        num_calib=32 if args.quick else (args.num_calib or [32])[0],
                        num_test=500 if args.quick and args.num_test is None else args.num_test,
                        out_dir=args.out, seed=args.seed, search=args.search,
                        budgets_mb=tuple(getattr(args, "budget_mb", None) or ()),
                        uniform=not getattr(args, "no_uniform", False),
                        greedy_images=getattr(args, "greedy_images", None),
                        config_overrides=extended_overrides(args))
        print(f"wrote {args.out}/{name}.json and {name}-mp.md")
    return 0

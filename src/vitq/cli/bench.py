"""``vitq bench``: the paper's Table 1 / Table 3 on the real models into ``benchmarks/results``
(:mod:`vitq.bench.runner`); with ``--mp ...`` the mixed-precision rows instead (:mod:`vitq.bench.mp_bench`)."""

from __future__ import annotations

import argparse

from vitq.cli.options import add_extended_args, extended_overrides


def add_parser(sub) -> argparse.ArgumentParser:
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
    add_extended_args(b)  # MPTQ-ViT flags for every bench run (--sqb, --optm, --fully-quantized, ...)
    b.add_argument("--mp", nargs="+", default=None, choices=["nuclear", "nuclear-output", "hessian", "greedy"],
                   help="mixed-precision rows instead (vitq.bench.mp_bench): one per allocation method and --bits")
    b.add_argument("--budget-mb", type=float, nargs="+", default=[], help="with --mp: explicit budgets too (MB)")
    b.add_argument("--greedy-images", type=int, default=None,
                   help="with --mp greedy: measure the greedy loss on the first N calibration images (default all)")
    b.add_argument("--no-uniform", action="store_true",
                   help="with --mp: do not run the uniform rows again; the tables compare with those already in the "
                        "results file (so a --peers table keeps its own rows)")
    return b


def cmd_bench(args: argparse.Namespace) -> int:
    from vitq.bench.runner import TABLE1_METHODS, run_bench

    if args.mp:
        return cmd_bench_mp(args)
    for name in args.model or ["fmnist-vit", "dinov2-s14-fmnist"]:
        run_bench(name, bits=tuple(args.bits), methods=tuple(args.methods or TABLE1_METHODS),
                  ablation=not args.no_ablation, num_calib=(32,) if args.quick else tuple(args.num_calib),
                  num_test=500 if args.quick and args.num_test is None else args.num_test, out_dir=args.out,
                  seed=args.seed, search=args.search, config_overrides=extended_overrides(args),
                  peers=args.peers)
        print(f"wrote {args.out}/{name}.json and {name}.md")
    return 0


def cmd_bench_mp(args: argparse.Namespace) -> int:
    """``vitq bench --mp ...``: mixed-precision rows for each bench model (see :mod:`vitq.bench.mp_bench`)."""
    from vitq.bench.mp_bench import run_mp_rows

    methods = args.methods or ["liu2021"]
    for name in args.model or ["fmnist-vit"]:
        for method in methods:
            run_mp_rows(name, mp_methods=tuple(args.mp), bits=tuple(args.bits), method=method,
                        num_calib=32 if args.quick else args.num_calib[0],
                        num_test=500 if args.quick and args.num_test is None else args.num_test,
                        out_dir=args.out, seed=args.seed, search=args.search,
                        budgets_mb=tuple(getattr(args, "budget_mb", None) or ()),
                        uniform=not getattr(args, "no_uniform", False),
                        greedy_images=getattr(args, "greedy_images", None),
                        config_overrides=extended_overrides(args))
        print(f"wrote {args.out}/{name}.json and {name}-mp.md")
    return 0

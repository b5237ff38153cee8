"""``vitq mp-search ... --out plan.json [--plot plan.png]``: search a mixed-precision plan (Liu et al. 3.3)
and write it as JSON; and the flags with which ``vitq quantize`` searches one first (``--mp nuclear|hessian|
greedy``, target ``--bits``/``--w-bits`` or ``--budget-mb``) or uses one (``--plan plan.json``, written by
``mp-search`` or by hand). ``vitq bench --mp`` is in :mod:`vitq.cli.bench`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from vitq.cli.argtypes import bits, existing_file, positive_float, positive_int
from vitq.cli.common import (
    DEFAULT_CALIB,
    add_model_args,
    add_seed_arg,
    check_data_sources,
    default_calib,
    float_model_from_args,
)
from vitq.errors import ConfigError, VitqError

#: the allocation methods of :func:`vitq.mp.search.search_plan` (``vitq.mp.search.MP_METHODS``, not imported
#: here so that building the parser does not import torch; a test checks they agree)
MP_METHODS = ("nuclear", "hessian", "greedy")


def add_allocation_args(p: argparse.ArgumentParser) -> None:
    """How the allocation searches: candidates, granularity, the nuclear-norm feature (quantize and mp-search)."""
    p.add_argument("--candidates", type=bits, nargs="+", default=None,
                   help="candidate bit-widths (default: target-2 .. target+2, at least 3)")
    p.add_argument("--granularity", choices=["module", "op"], default="module",
                   help="one bit-width per MSA/MLP module (the paper) or per op (default module)")
    p.add_argument("--msa-feature", choices=["attention", "output"], default="attention",
                   help="--mp nuclear: the MSA feature of Eq. 17, attention map (paper) or MSA output")


def add_mp_quantize_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``vitq quantize`` that choose a mixed-precision plan (read by :func:`apply_mp_args`)."""
    p.add_argument("--mp", choices=MP_METHODS, default=None,
                   help="search a mixed-precision plan first: the size of uniform --bits (or --budget-mb)")
    p.add_argument("--budget-mb", type=positive_float, default=None,
                   help="model size budget in MB (10^6 bytes) for --mp")
    add_allocation_args(p)
    p.add_argument("--plan", type=existing_file, default=None,
                   help="a mixed-precision plan JSON (from vitq mp-search, editable)")


def _search(args: argparse.Namespace, model, images, config):
    from vitq.mp.search import search_plan

    if config.w_bits != config.a_bits and args.budget_mb is None:
        raise ConfigError(f"--mp gives weights and inputs of a unit one bit-width; --w-bits {config.w_bits} and "
                          f"--a-bits {config.a_bits} differ: give --bits, or --budget-mb")
    return search_plan(model, images, method=args.mp, bits=config.w_bits if args.budget_mb is None else None,
                       budget_mb=args.budget_mb, base_bits=config.w_bits, candidates=args.candidates,
                       granularity=args.granularity, msa_feature=args.msa_feature,
                       per_channel_weights=config.per_channel_weights, quantize_head=config.quantize_head,
                       batch_size=config.batch_size, seed=config.seed, progress=True)


def apply_mp_args(args: argparse.Namespace, model, images, config):
    """``(config with the plan, summary fields)`` for ``vitq quantize``: searches (``--mp``) or loads (``--plan``)."""
    from vitq.mp.plan import load_plan

    if getattr(args, "mp", None) and getattr(args, "plan", None):
        raise ConfigError("give either --mp (search a plan) or --plan FILE (use one), not both")
    if getattr(args, "plan", None):
        try:
            plan = load_plan(args.plan)
        except (VitqError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"--plan {args.plan}: {e}") from e
        return dataclasses.replace(config, plan=plan), {"plan_file": str(args.plan)}
    if not getattr(args, "mp", None):
        if getattr(args, "budget_mb", None) is not None:
            raise ConfigError("--budget-mb needs --mp METHOD")
        return config, {}
    res = _search(args, model, images, config)
    # the bits actually used (bits_min / bits_max / average_bits), not the uniform --bits the budget came from
    return dataclasses.replace(config, plan=res.plan), res.summary()


EXAMPLES = """examples:
  vitq mp-search --bits 6 --out plan.json --plot plan.png
  vitq mp-search --mp hessian --budget-mb 0.5 --out plan.json
  vitq quantize --plan plan.json --out runs/mixed
"""


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("mp-search", help="search a mixed-precision plan (Liu et al. 3.3) and write it as JSON",
                       description="Search a mixed-precision plan (Liu et al. 3.3): one bit-width per MSA/MLP "
                                   "module (or per op) within a model-size budget, written as JSON for "
                                   "vitq quantize --plan.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(s)
    s.add_argument("--mp", dest="mp", choices=MP_METHODS, default="nuclear",
                   help="allocation method (default nuclear)")
    s.add_argument("--bits", type=bits, default=None, help="target average bits: budget = uniform size (default 6)")
    s.add_argument("--budget-mb", type=positive_float, default=None, help="budget in MB instead of --bits")
    s.add_argument("--base-bits", type=bits, default=None,
                   help="bits of ops outside the units (default --bits, else 8)")
    add_allocation_args(s)
    s.add_argument("--init", choices=["percentile", "minmax"], default="percentile",
                   help="cheap intervals of the sensitivity probe")
    s.add_argument("--per-channel", action="store_true", help="per-channel weights (as the plan will be calibrated)")
    s.add_argument("--quantize-head", action="store_true", help="the classifier head is quantized too")
    s.add_argument("--calib", default=None, help=f"calibration images (default with the default model: {DEFAULT_CALIB})")
    s.add_argument("--num-calib", type=positive_int, default=32, help="calibration images (default 32)")
    add_seed_arg(s)
    s.add_argument("--out", required=True, help="plan JSON to write (use it with vitq quantize --plan)")
    s.add_argument("--plot", default=None, help="also write a PNG of bits and sensitivity per unit")
    return s


def cmd_mp_search(args: argparse.Namespace) -> int:
    check_data_sources(args, "--calib")  # before anything heavy is imported
    import torch

    from vitq.data.sources import load_images
    from vitq.models.loading import model_data_config
    from vitq.mp.search import search_plan

    calib_src = default_calib(args)
    if calib_src is None:
        raise VitqError("--calib DIR is required for this model (a folder of calibration images)")
    model = float_model_from_args(args)
    calib = load_images(calib_src, model_data_config(model), num=args.num_calib, seed=args.seed)
    torch.manual_seed(args.seed)
    target = args.bits if args.bits is not None or args.budget_mb is not None else 6
    res = search_plan(model, calib.images, method=args.mp, bits=target, budget_mb=args.budget_mb,
                      base_bits=args.base_bits, candidates=args.candidates, granularity=args.granularity,
                      msa_feature=args.msa_feature, init=args.init, per_channel_weights=args.per_channel,
                      quantize_head=args.quantize_head, seed=args.seed, progress=True)
    res.save(args.out)
    if args.plot:
        from vitq.mp.report import plot_plan

        plot_plan(res, args.plot)
    print(json.dumps({"method": res.method, "budget_mb": res.budget_mb, "size_mb": res.size_mb,
                      "average_bits": round(res.average_bits, 3), "seconds": round(res.seconds, 2),
                      "unit_bits": res.unit_bits}, indent=2))
    print(f"wrote plan to {args.out}")
    return 0

"""``vitq report``: the report (markdown + plots) of a run or of benchmark results.

- ``vitq quantize`` writes ``report.md`` (+ PNGs) into its output directory (``--no-report`` skips it);
- ``vitq report RUN_DIR`` (re)makes that report from a saved directory (``--calib`` for the per-op SQNR);
- ``vitq report --bench benchmarks/results/fmnist-vit.json`` writes the benchmark report with its plots.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vitq.cli.argtypes import positive_int
from vitq.cli.common import DEFAULT_CALIB, add_seed_arg, check_data_sources
from vitq.errors import VitqError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

log = logging.getLogger("vitq")

#: calibration images used for the per-op output SQNR of a run report
REPORT_IMAGES = 8


def add_report_flag(q: argparse.ArgumentParser) -> None:
    """``vitq quantize --no-report``."""
    q.add_argument("--no-report", action="store_true", help="do not write report.md and its plots into --out")


EXAMPLES = """examples:
  vitq report runs/fmnist-vit-liu2021-w8a8                   remake report.md (+ PNGs) of a run
  vitq report runs/my-run --calib calib_images/ --num-images 4
  vitq report --bench benchmarks/results/fmnist-vit.json      the benchmark report with its plots
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``vitq report`` subcommand."""
    r = sub.add_parser("report", help="the report (markdown + plots) of a vitq quantize run or of benchmark results",
                       description="Write the report (markdown + PNG plots) of a directory written by vitq quantize "
                                   "(summary, per-op calibration, per-op output SQNR against the float model, "
                                   "intervals, bit-widths) or of benchmark results files (top-1 vs bit-width).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dir", nargs="?", help="a directory written by vitq quantize")
    r.add_argument("--bench", action="append", default=[], metavar="RESULTS_JSON",
                   help="a benchmark results file (benchmarks/results/<model>.json), repeatable")
    r.add_argument("--out", default=None, help="output directory (default: RUN_DIR, or next to the results file)")
    r.add_argument("--calib", default=None, help="calibration images for the per-op output SQNR (default: the "
                                                 "run's recorded --calib, or the built-in set for vitq: models)")
    r.add_argument("--num-images", type=positive_int, default=REPORT_IMAGES, help="images for the per-op SQNR (default 8)")
    r.add_argument("--no-layer-sqnr", action="store_true", help="skip the per-op output SQNR (no model forward)")
    add_seed_arg(r)
    return r


def report_after_quantize(qmodel: nn.Module, model: nn.Module, calib_images: torch.Tensor, out: Path,
                          summary: dict, calibration: dict) -> Path:
    """The run report of ``vitq quantize``, written into its output directory."""
    from vitq.report.run_report import write_run_report

    path = write_run_report(qmodel, out, float_model=model, images=calib_images[:REPORT_IMAGES], summary=summary,
                            calibration=calibration)
    print(f"wrote report {path}")
    return path


def _run_images(run_dir: Path, args: argparse.Namespace) -> torch.Tensor | None:
    from vitq.data.sources import load_images
    from vitq.data.transforms import DataConfig

    path = run_dir / "vitq.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitqError(f"{path} is not valid JSON: {e}") from e
    summary = (meta.get("extra") or {}).get("summary") or {}
    spec = (meta.get("model_spec") or {}).get("spec", "")
    src = args.calib or summary.get("calib") or (DEFAULT_CALIB if spec.startswith("vitq:") else None)
    if src is None:
        log.warning("report: no calibration images known for %s; give --calib for the per-op output SQNR", run_dir)
        return None
    return load_images(src, DataConfig.from_dict(meta["data_config"]), num=args.num_images, seed=args.seed).images


def cmd_report(args: argparse.Namespace) -> int:
    if not args.run_dir and not args.bench:
        raise VitqError("give RUN_DIR (a vitq quantize output) and/or --bench RESULTS_JSON")
    check_data_sources(args, "--calib")
    from vitq.report.bench_report import write_bench_report
    from vitq.report.run_report import write_run_report

    for results in args.bench:
        if not Path(results).is_file():
            raise VitqError(f"--bench {results}: no such results file")
        try:
            path = write_bench_report(results, args.out)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VitqError(f"--bench {results} is not a results JSON file: {type(e).__name__}: {e}") from e
        print(f"wrote {path}")
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not (run_dir / "vitq.json").is_file():
            raise VitqError(f"{run_dir} is not a vitq quantize output directory (no vitq.json)")
        images = None if args.no_layer_sqnr else _run_images(run_dir, args)
        print(f"wrote {write_run_report(run_dir, args.out, images=images)}")
    return 0

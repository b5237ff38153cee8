"""The ``vitq`` parser and entry point: one sub-parser per command module of :mod:`vitq.cli`."""

from __future__ import annotations

import argparse
import logging
import time

import torch

from vitq.cli import bench, export, mp_search, quantize, report
from vitq.cli import eval as evaluate
from vitq.errors import VitqError

log = logging.getLogger("vitq")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitq", description="Post-training quantization of vision transformers.")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = ap.add_subparsers(dest="command")
    quantize.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    bench.add_parser(sub)
    mp_search.add_parser(sub)
    report.add_parser(sub)  # vitq report RUN_DIR | --bench RESULTS_JSON
    return ap


def _commands() -> dict:
    return {"quantize": quantize.cmd_quantize, "eval": evaluate.cmd_eval, "bench": bench.cmd_bench,
            "mp-search": mp_search.cmd_mp_search, "export": export.cmd_export, "report": report.cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Run one ``vitq`` command; no command means ``vitq quantize`` (the embedded default). Returns the exit
    status: 2 on a :class:`~vitq.errors.VitqError` (logged as one line)."""
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
        rc = _commands()[args.command](args)
    except VitqError as e:
        log.error("%s", e)
        return 2
    log.info("done in %.1fs", time.perf_counter() - t0)
    return rc

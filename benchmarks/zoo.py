"""The zoo benchmark: >= 24 timm and >= 8 Hugging Face vision transformers, small configs, random init,
W8A8 quantized, calibrated, exported to ONNX and run in ONNX Runtime (:mod:`vitq.bench.zoo`).

    OMP_NUM_THREADS=1 python benchmarks/zoo.py                      # all -> benchmarks/results/zoo.json
    python benchmarks/zoo.py --only eva02 timm:cait_xxs24_224 --out /tmp/zoo.json
    python benchmarks/zoo.py --table                                 # print the README table from zoo.json

Rows are written after each model (a crash keeps the finished ones). ``load_avg`` is the machine's
1-minute load average when the row finished (the machine is shared; ``seconds`` depend on it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "zoo.json"


def main(argv: list[str] | None = None) -> int:
    from vitq.bench.zoo import run_entry, select, zoo_table
    from vitq.utils.jsonio import dumps_strict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="models or families to run (default all)")
    p.add_argument("--fast", action="store_true", help="only the test suite's fast subset")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.table:
        print(zoo_table(json.loads(args.out.read_text())["rows"]))
        return 0
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    entries = select(args.only, fast=args.fast)
    rows = []
    for e in entries:
        row = run_entry(e)
        row["load_avg"] = round(os.getloadavg()[0], 2)
        rows.append(row)
        status = "PASS" if row["passed"] else "FAIL"
        print(f"{status} {e.model:55s} lin {row.get('linears_quantized')}/{row.get('linears')} "
              f"attn {row.get('attn_matmuls_quantized')}/{row.get('attn_matmuls')} "
              f"diff {row.get('disabled_max_abs_diff', float('nan')):.1e} sqnr {row.get('w8a8_sqnr_db')} "
              f"onnx {row.get('export_ok')} {row['seconds']}s {row.get('error', '')} {row.get('export_error', '')} "
              f"{row.get('uncaptured') or ''}", flush=True)
        doc = {"benchmark": "zoo", "command": "python benchmarks/zoo.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""),
               "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
               "passed": sum(r["passed"] for r in rows), "total": len(rows), "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dumps_strict(doc, what="zoo results", indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

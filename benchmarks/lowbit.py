"""Low-bit accuracy benchmark (issue 16): recipes x bit-widths x calibration seeds on one model, with
the float row on the same test images; one row per (recipe, bits): the mean top-1 over the seeds,
``top1_std``, ``seeds``, ``top1_per_seed``, ``num_test``, ``origin``, the load average at the start and
end of each calibration.

    python benchmarks/lowbit.py --model dinov2-s14-fmnist --test fmnist:test --num-test 5000 \\
        --bits 4 --methods liu2021-pc liu2021-rot --seeds 0 1 2 --out benchmarks/results/dinov2-s14-fmnist.json

Rows merge into ``--out`` (the same schema and row keys as ``vitq bench``); a rerun of a configuration
replaces its row. Extra ``--set key=value`` QuantConfig fields apply to every run and are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys

import torch

import vitq
from vitq.bench.results import merge_rows
from vitq.bench.runner import BENCH_MODELS
from vitq.data.sources import load_images
from vitq.eval.metrics import agreement, predict, top1
from vitq.eval.size import model_size_mb
from vitq.models.loading import create_model, model_data_config


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dinov2-s14-fmnist", choices=sorted(BENCH_MODELS))
    p.add_argument("--test", default=None, help="test image source (default: the bench model's)")
    p.add_argument("--num-test", type=int, default=5000)
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument("--bits", type=int, nargs="+", default=[4])
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="QuantConfig field for every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--no-float", action="store_true", help="do not (re)write the float row")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    command = "python benchmarks/lowbit.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    bm = BENCH_MODELS[a.model]
    model = create_model(bm.spec)
    dc = model_data_config(model)
    test = load_images(a.test or bm.test, dc, num=a.num_test, seed=0)
    n_test = int(test.images.shape[0])
    ref = predict(model, test.images, progress=True, desc="float")
    top1_float = top1(ref, test.labels)
    base = {"model": a.model, "num_test": n_test, "test": a.test or bm.test, "top1_float": top1_float,
            "command": command, "mixed_precision": False, "threads": a.threads, "torch": torch.__version__,
            "benchmark": "lowbit"}
    if not a.no_float:
        merge_rows(a.out, [{**base, "method": "float", "origin": "baseline", "w_bits": 32, "a_bits": 32,
                            "top1": top1_float, "size_mb": sum(p.numel() for p in model.parameters()) * 4 / 1e6,
                            "calib_seconds": 0.0, "num_calib": 0}])
    print(f"float top-1 {100 * top1_float:.2f} on {n_test} images", flush=True)
    for bits in a.bits:
        for method in a.methods:
            per_seed, secs, agree, loads = [], [], [], []
            for seed in a.seeds:
                calib = load_images(bm.calib, dc, num=a.num_calib, seed=seed)
                cfg = vitq.QuantConfig(w_bits=bits, a_bits=bits, method=method, seed=seed, **overrides)
                load0 = os.getloadavg()[0]
                out = vitq.pipeline(model, cfg, calib.images, progress=False)
                loads.append((round(load0, 2), round(os.getloadavg()[0], 2)))
                logits = predict(out.model, test.images, progress=True, desc=f"{method} W{bits}A{bits} s{seed}")
                per_seed.append(top1(logits, test.labels))
                agree.append(agreement(logits, ref))
                secs.append(out.report.seconds)
                print(f"{method} W{bits}A{bits} seed {seed}: top-1 {100 * per_seed[-1]:.2f} "
                      f"calib {secs[-1]:.0f}s load {loads[-1]}", flush=True)
            row = {**base, "method": method, "origin": cfg.recipe().origin, "w_bits": bits, "a_bits": bits,
                   "top1": statistics.fmean(per_seed),
                   "top1_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                   "seeds": list(a.seeds), "top1_per_seed": per_seed, "agreement": statistics.fmean(agree),
                   "size_mb": model_size_mb(out.model), "calib_seconds": round(statistics.fmean(secs), 1),
                   "num_calib": a.num_calib, "load_avg": loads, "config_overrides": overrides,
                   **cfg.recipe().row_fields(cfg)}
            merge_rows(a.out, [row])
            print(json.dumps({k: row[k] for k in ("method", "w_bits", "top1", "top1_std", "calib_seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

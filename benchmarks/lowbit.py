"""Low-bit accuracy benchmark (issue 16): recipes x bit-widths x calibration seeds on one model, with
the float row on the same test images; one row per (recipe, bits): the mean top-1 over the seeds,
``top1_std``, ``seeds``, ``top1_per_seed``, ``num_test``, ``origin``, the load average at the start and
end of each calibration.

    python benchmarks/lowbit.py --model dinov2-s14-fmnist --test fmnist:test --num-test 5000 \\
        --bits 4 --methods liu2021-pc liu2021-rot --seeds 0 1 2 --out benchmarks/results/dinov2-s14-fmnist.json

Rows merge into ``--out`` (the same schema and row keys as ``vitq bench``); a rerun of a configuration
replaces its row, unless ``--add-seeds``: then the new seeds join the row of the same configuration (same
test images, calibration size and ``--set`` fields; a seed already in it is refused), so a headline row can
grow one seed at a time. Extra ``--set key=value`` QuantConfig fields apply to every run and are recorded.

``--export`` also exports the last seed's model of each configuration to ONNX QDQ, runs it in ONNX Runtime
on the same test images and writes the packed file: one ``kind: "lowbit_export"`` row in
``benchmarks/results/export.json`` (ORT and simulation top-1, their argmax agreement, the packed file
against ``params x bits / 8`` plus the float parts).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

import vitq
from vitq.bench.results import load_rows, merge_rows, row_key
from vitq.bench.runner import BENCH_MODELS
from vitq.data.sources import load_images
from vitq.eval.metrics import agreement, predict, top1
from vitq.eval.size import model_size_mb
from vitq.export.serialization import load_quantized, read_meta, save_quantized
from vitq.models.loading import create_model, model_data_config
from vitq.recipes import get_recipe

EXPORT_RESULTS = Path(__file__).parent / "results" / "export.json"
# what must match for seeds to join one row (besides the row key: model, method, bits, calibration and test sizes)
SAME = ("test", "config_overrides")


def _per_seed(row: dict, name: str, scalar: str) -> list:
    """A per-seed list of an older row (rows written before the per-seed lists repeat the mean)."""
    return list(row.get(name) or [row[scalar]] * len(row["seeds"]))


def existing_row(path: str, new: dict) -> dict | None:
    """The row of ``path`` that ``new``'s seeds join (checked before any calibration runs), or None."""
    old = [r for r in load_rows(path) if row_key(r) == row_key(new)]
    if not old:
        return None
    old = old[0]
    differ = [k for k in SAME if old.get(k) != new.get(k)]
    # the float model on the same images: equal up to the order of float sums (1 vs 2 threads), 2 images at most
    if abs(old["top1_float"] - new["top1_float"]) * new["num_test"] > 2.5:
        differ.append("top1_float")
    if differ:
        raise SystemExit(f"--add-seeds: the existing {new['method']} W{new['w_bits']}A{new['a_bits']} row differs "
                         f"in {differ}; rerun without --add-seeds to replace it")
    both = set(old["seeds"]) & set(new["seeds"])
    if both:
        raise SystemExit(f"--add-seeds: seeds {sorted(both)} are already in the {new['method']} row")
    return old


def add_seeds(old: dict, new: dict) -> dict:
    """``new`` (this run's seeds) joined to ``old`` (the committed row of the same configuration)."""
    row = {**new, "top1_float": old["top1_float"]}
    for name, scalar in (("top1_per_seed", "top1"), ("agreement_per_seed", "agreement"),
                         ("calib_seconds_per_seed", "calib_seconds"), ("threads_per_seed", "threads")):
        row[name] = _per_seed(old, name, scalar) + new[name]
    row["seeds"] = old["seeds"] + new["seeds"]
    row["load_avg"] = old["load_avg"] + new["load_avg"]
    row["commands"] = old.get("commands", [old["command"]]) + [new["command"]]
    return row


def summarise(row: dict) -> dict:
    """The mean and spread of the per-seed lists."""
    per_seed = row["top1_per_seed"]
    row["top1"] = statistics.fmean(per_seed)
    row["top1_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    row["agreement"] = statistics.fmean(row["agreement_per_seed"])
    row["calib_seconds"] = round(statistics.fmean(row["calib_seconds_per_seed"]), 1)
    return row


def markdown_table(path: str) -> str:
    """The rows of ``path`` as one markdown table: bits, recipe, origin, top-1 (mean +- std over the seeds),
    the drop against the float row on the same images, calibration images and seconds."""
    rows = [r for r in load_rows(path) if r.get("benchmark") == "lowbit" and r["method"] != "float"]
    lines = ["| bits | recipe | origin | top-1 % | seeds | vs float | calib images | calib s |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["w_bits"], r["origin"] != "vitq", -r["top1"])):
        std = f" ± {100 * r['top1_std']:.2f}" if len(r["seeds"]) > 1 else ""
        lines.append(f"| W{r['w_bits']}A{r['a_bits']} | `{r['method']}`{' (' + str(r['recon_iters']) + ' steps)' if r.get('recon_iters') else ''} "
                     f"| {r['origin']} | {100 * r['top1']:.2f}{std} | {len(r['seeds'])} | {100 * (r['top1'] - r['top1_float']):+.2f} "
                     f"| {r['num_calib']} | {r['calib_seconds']:.0f} |")
    return "\n".join(lines)


def float64_logits(qmodel, images: torch.Tensor) -> torch.Tensor:
    """The simulation's logits computed in float64: the same codes and intervals, other float rounding.

    A low-bit model's argmax can hang on a last-bit difference before a quantizer (one code flips, and
    the step it moves propagates): float64 against float32 is the agreement that no faithful
    implementation in other float arithmetic (ONNX Runtime's kernels, another sum order) can be expected
    to beat, the noise floor of ``agreement``."""
    import copy

    q64 = copy.deepcopy(qmodel).double()
    return predict(q64, images.double(), progress=True, desc="simulation in float64")


def export_row(qmodel, logits: torch.Tensor, test, base: dict, method: str, origin: str, bits: int, seed: int,
               threads: int) -> dict:
    """ONNX QDQ in ONNX Runtime against the simulation on the same images, and the packed file's size;
    ``agreement_float64``: the simulation in float64 against float32 (:func:`float64_logits`)."""
    import tempfile

    import onnxruntime

    from vitq.export.onnx_export import export_onnx
    from vitq.export.ort_runtime import OrtModel
    from vitq.export.packing import PACKED_FILE, expected_packed_bytes, save_packed

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(qmodel, Path(d) / "model.onnx")
        ort_logits = OrtModel(path, threads=threads).predict(test.images, batch_size=32)
        onnx_mb = path.stat().st_size / 1e6
        save_packed(qmodel, Path(d) / "packed")
        packed = (Path(d) / "packed" / PACKED_FILE).stat().st_size
    exp = expected_packed_bytes(qmodel)
    params = exp["params"]
    logits64 = float64_logits(qmodel, test.images)
    return {**base, "kind": "lowbit_export", "method": method, "bits": bits, "w_bits": bits, "a_bits": bits,
            "batch": None, "seed": seed, "origin": origin, "ort_version": onnxruntime.__version__,
            "top1_ort": top1(ort_logits, test.labels), "top1_sim": top1(logits, test.labels),
            "agreement": agreement(ort_logits, logits), "agreement_float64": agreement(logits64, logits),
            "agreement_ort_vs_float64": agreement(ort_logits, logits64), "top1_sim_float64": top1(logits64, test.labels),
            "max_abs_logit_diff": round((ort_logits - logits).abs().max().item(), 5),
            "onnx_file_mb": round(onnx_mb, 3), "packed_mb": round(packed / 1e6, 4), "quantized_params": params,
            "params_x_bits_mb": round(params * bits / 8 / 1e6, 4), "float_parts_mb": round(exp["float"] / 1e6, 4),
            "expected_mb": round(exp["total"] / 1e6, 4), "packed_vs_expected": round(packed / exp["total"], 5),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def write_export_row(qmodel, logits, test, base: dict, method: str, bits: int, seed: int, a) -> None:
    from export_speed import merge

    keep = {k: base[k] for k in ("model", "num_test", "test", "top1_float", "command", "torch")}
    erow = export_row(qmodel, logits, test, keep, method, get_recipe(method).origin, bits, seed, a.threads)
    merge(Path(a.export_out), [erow], {"cpu_count": os.cpu_count()})
    print(json.dumps({k: erow[k] for k in ("method", "bits", "top1_ort", "top1_sim", "agreement",
                                            "agreement_float64", "packed_mb", "expected_mb", "packed_vs_expected")}), flush=True)


def export_saved(a, base: dict, test) -> int:
    """``--export-from``: the export row of a model saved by ``--save-model`` (no calibration)."""
    cfg = read_meta(Path(a.export_from))["config"]
    if cfg["w_bits"] != cfg["a_bits"]:
        raise SystemExit(f"{a.export_from}: W{cfg['w_bits']}A{cfg['a_bits']}: export rows are for WbAb models")
    qmodel = load_quantized(a.export_from)
    logits = predict(qmodel, test.images, progress=True, desc="saved model")
    write_export_row(qmodel, logits, test, base, cfg["method"], cfg["w_bits"], cfg["seed"], a)
    return 0


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
    p.add_argument("--methods", nargs="+", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="QuantConfig field for every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--no-float", action="store_true", help="do not (re)write the float row")
    p.add_argument("--add-seeds", action="store_true",
                   help="add these seeds to the existing row of the same configuration instead of replacing it")
    p.add_argument("--export", action="store_true",
                   help="export the last seed's model to ONNX QDQ and packed storage (a row in export.json)")
    p.add_argument("--export-out", default=str(EXPORT_RESULTS))
    p.add_argument("--save-model", metavar="DIR", default=None,
                   help="save the last seed's quantized model of each method and bit-width to DIR/<method>-w<bits> "
                        "(vitq.export.save_quantized; for a later --export-from)")
    p.add_argument("--export-from", metavar="DIR", default=None,
                   help="no calibration: load a model saved with --save-model and write its export row")
    p.add_argument("--table", action="store_true", help="print --out's rows as a markdown table and exit")
    a = p.parse_args(argv)
    if not a.table and not a.methods and not a.export_from:
        p.error("--methods is required (or --table, --export-from)")
    if a.table:
        print(markdown_table(a.out))
        return 0
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
    if a.export_from:
        return export_saved(a, base, test)
    olds = {}
    for bits in a.bits:
        for method in a.methods:
            cfg = vitq.QuantConfig(w_bits=bits, a_bits=bits, method=method, seed=a.seeds[0], **overrides)
            probe = {**base, "method": method, "w_bits": bits, "a_bits": bits, "num_calib": a.num_calib,
                     "seeds": list(a.seeds), "config_overrides": overrides, **cfg.recipe().row_fields(cfg)}
            olds[method, bits] = existing_row(a.out, probe) if a.add_seeds else None
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
                   "seeds": list(a.seeds), "top1_per_seed": per_seed, "agreement_per_seed": agree,
                   "calib_seconds_per_seed": [round(x, 1) for x in secs], "threads_per_seed": [a.threads] * len(secs),
                   "size_mb": model_size_mb(out.model), "num_calib": a.num_calib, "load_avg": loads,
                   "config_overrides": overrides, **cfg.recipe().row_fields(cfg)}
            if olds[method, bits] is not None:
                row = add_seeds(olds[method, bits], row)
            merge_rows(a.out, [summarise(row)])
            if a.save_model:
                save_quantized(out.model, Path(a.save_model) / f"{method}-w{bits}", overwrite=True)
            print(json.dumps({k: row[k] for k in ("method", "w_bits", "top1", "top1_std", "seeds", "calib_seconds")}),
                  flush=True)
            if a.export:
                write_export_row(out.model, logits, test, base, method, bits, a.seeds[-1], a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

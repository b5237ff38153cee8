"""``vitq bench``: the paper's Table 1 and Table 3 on models we can run, written as results rows.

For each model: float; W8A8, W6A6, W4A4 with MinMax, Percentile, EasyQuant, MSE and the Liu method;
and the ablation (similarity; + ranking; + bias correction; all). Calibration images come from the
train split only (the shipped 1,024-image subset of Fashion-MNIST train), test images from the test
split. Results merge into ``benchmarks/results/<model>.json`` after every run, so an interrupted
benchmark keeps what it finished.

Under ``torchrun`` every rank calibrates and evaluates its shard of the images (:mod:`vitq.distributed`,
:mod:`vitq.eval.sharded`) and rank 0 alone writes the rows: the same rows as one process, with
``world_size`` added. ``--peers`` (ONNX Runtime's own quantizer) runs in one process only.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import vitq
from vitq import distributed
from vitq.bench.results import merge_rows
from vitq.bench.tables import ABLATION, TABLE1_METHODS, table1, table3, table_compare, table_mp, table_search
from vitq.data.sources import load_images
from vitq.eval.sharded import agreement_all, predict_shard, sqnr_db_all, top1_all
from vitq.eval.size import model_size_mb
from vitq.models.loading import create_model, model_data_config
from vitq.recipes import recipe_names
from vitq.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchModel:
    spec: str
    calib: str
    test: str
    test_fallback: str | None = None
    default_num_test: int | None = None


BENCH_MODELS = {
    "fmnist-vit": BenchModel("vitq:fmnist-vit", "fmnist-subset:calib", "fmnist:test", "fmnist-subset:test"),
    # 2,000 test images: one float evaluation of the 22M-parameter backbone takes about a minute here.
    "dinov2-s14-fmnist": BenchModel("vitq:dinov2-s14-fmnist", "fmnist-subset:calib", "fmnist-subset:test"),
}
# From the recipe registry: Table 1's methods, the ablation rows beyond them, and what ``--peers`` adds
# so that one command makes the whole comparison table (MPTQ-ViT and the research peers as vitq
# recipes; ONNX Runtime's own PTQ runs beside them).
ABLATION_METHODS = tuple(m for m, *_ in ABLATION if m not in TABLE1_METHODS)
PEER_METHODS = tuple(recipe_names(peer=True))


def with_peer_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    """``methods`` followed by the :data:`PEER_METHODS` it lacks (order kept, no duplicates)."""
    return tuple(methods) + tuple(m for m in PEER_METHODS if m not in methods)


def _test_set(bm: BenchModel, dc, num_test: int | None, seed: int, shard: bool = False):
    try:
        return load_images(bm.test, dc, num=num_test, seed=seed, shard=shard)
    except vitq.errors.CalibrationDataError as e:
        if bm.test_fallback is None:
            raise
        log.warning("%s; falling back to %s", e, bm.test_fallback)
        return load_images(bm.test_fallback, dc, num=num_test, seed=seed, shard=shard)


def run_bench(model_name: str, *, bits: tuple[int, ...] = (8, 6, 4), methods: tuple[str, ...] = TABLE1_METHODS,
              ablation: bool = True, num_calib: tuple[int, ...] = (32, 128), num_test: int | None = None,
              out_dir: str | Path = "benchmarks/results", seed: int = 0, search: str = "fast",
              command: str | None = None, config_overrides: dict | None = None, peers: bool = False) -> list[dict]:
    """Run the benchmark for one model; returns its rows (also merged into the results file).

    ``config_overrides`` adds QuantConfig fields to every run (e.g. ``{"fully_quantized": True}``).
    ``peers`` adds ONNX Runtime's own static quantization (W8A8, its three calibrators) on the same
    calibration and test images, and the :data:`PEER_METHODS` recipes at every bit-width.
    """
    if model_name not in BENCH_MODELS:
        raise vitq.errors.ConfigError(f"unknown benchmark model {model_name!r}; choose from {sorted(BENCH_MODELS)}")
    bm = BENCH_MODELS[model_name]
    if peers and distributed.is_distributed():
        raise vitq.errors.ConfigError("--peers runs ONNX Runtime's quantizer in one process: run it without torchrun")
    if peers:
        methods = with_peer_methods(methods)
    command = command or "vitq " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out_dir = Path(out_dir)
    results = out_dir / f"{model_name}.json"
    model = create_model(bm.spec)
    distributed.check_same_model(model)
    dc = model_data_config(model)
    # this rank's block of the test images (all of them in one process; --peers runs in one process only)
    test = _test_set(bm, dc, num_test or bm.default_num_test, seed, shard=True)
    n_test = test.num_total
    t0 = time.perf_counter()
    ref = predict_shard(model, test.images, progress=True, desc="float", sharded=True)
    float_seconds = time.perf_counter() - t0
    top1_float = top1_all(ref, test.labels)
    base = {"model": model_name, "num_test": n_test, "top1_float": top1_float, "command": command,
            "mixed_precision": False, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if distributed.is_distributed():
        base["world_size"] = distributed.world_size()
    rows = [{**base, "method": "float", "origin": "baseline", "w_bits": 32, "a_bits": 32, "top1": top1_float,
             "size_mb": sum(p.numel() for p in model.parameters()) * 4 / 1e6, "calib_seconds": 0.0,
             "num_calib": 0, "eval_seconds": float_seconds}]
    _merge(results, rows)
    if peers and 8 in bits:
        from vitq.peers.ort_static import ort_static_rows

        for n in num_calib:
            calib = load_images(bm.calib, dc, num=n, seed=seed)
            peer_rows = ort_static_rows(model_name, model, calib.images, test.images, test.labels, command=command,
                                        threads=torch.get_num_threads(), reference_logits=ref)
            for r in peer_rows:
                r["origin"] = "peer"  # ONNX Runtime's own quantizer
                r.update(num_calib=n, num_test=n_test, top1_float=top1_float)
                log.info("%s %s W8A8 n=%d: top-1 %.4f (float %.4f)", model_name, r["method"], n, r["top1"], top1_float)
            rows += peer_rows
            merge_rows(results, peer_rows)
    # Table 1 rows first (every method at every bit-width), the ablation after: an interrupted run
    # still has the main comparison.
    plan = [(n, b, m) for n in num_calib for b in bits for m in methods]
    plan += [(n, b, m) for n in num_calib for b in bits for m in (ABLATION_METHODS if ablation else ())]
    for n, b, method in tqdm(plan, desc=f"bench {model_name}", unit="run", disable=not distributed.is_main()):
        calib = load_images(bm.calib, dc, num=n, seed=seed)
        cfg = vitq.QuantConfig(w_bits=b, a_bits=b, method=method, seed=seed, search=search, **(config_overrides or {}))
        q = vitq.quantize(model, cfg)
        rep = vitq.calibrate(q, distributed.shard(calib.images, "calibration images"), progress=False)
        vitq.freeze(q)
        t0 = time.perf_counter()
        out = predict_shard(q, test.images, progress=True, desc=f"{method} W{b}A{b}", sharded=True)
        row = {**base, "method": method, "origin": cfg.recipe().origin, "w_bits": b, "a_bits": b,
               "top1": top1_all(out, test.labels),
               "size_mb": model_size_mb(q), "calib_seconds": round(rep.seconds, 2), "num_calib": n,
               "agreement": agreement_all(out, ref), "logits_sqnr_db": round(sqnr_db_all(ref, out), 3),
               "eval_seconds": round(time.perf_counter() - t0, 2), "search": search,
               **cfg.recipe().row_fields(cfg)}  # quantizer / smoothing choices of mptq, ptq4vit, repq-vit
        log.info("%s %s W%dA%d n=%d: top-1 %.4f (float %.4f), calib %.1fs", model_name, method, b, b, n,
                 row["top1"], top1_float, rep.seconds)
        rows.append(row)
        _merge(results, [row])
        del q
    with distributed.main_first(f"writing {results}") as writer:
        if writer:
            write_tables(results, model_name)
    return rows


def _merge(results: Path, rows: list[dict]) -> None:
    """Merge rows into the results file: rank 0 alone, once every rank has finished them."""
    with distributed.main_first(f"writing {results}") as writer:
        if writer:
            merge_rows(results, rows)


def write_tables(results: Path, model_name: str) -> Path:
    from vitq.bench.results import load_rows

    rows = load_rows(results)
    md = results.with_suffix(".md")
    cmds = sorted({r["command"] for r in rows if r["model"] == model_name})
    text = (f"# {model_name}: Liu et al. (2021) Table 1 and Table 3 layouts\n\nMade by:\n\n"
            + "\n".join(f"    {c}" for c in cmds) + "\n\n## Table 1: methods x bit-widths\n" + table1(rows, model_name)
            + "\n\n## Table 3: ablation\n" + table3(rows, model_name)
            + "\n\n## Ours, MPTQ-ViT and the peers (`vitq bench --peers`)\n" + table_compare(rows, model_name)
            + "\n\n## MPTQ-ViT's parts and other variants\n" + table_compare(rows, model_name, variants=True)
            + "\n\n## Mixed precision vs uniform at the same size\n" + table_mp(rows, model_name))
    if any(r["model"] == model_name and r.get("search") == "reference" for r in rows):
        text += "\n\n## Fast vs reference search (`--search reference`)\n" + table_search(rows, model_name)
    text += "\n"
    atomic_write_text(md, text)
    return md

"""``vitq bench --model detr-synth``: the analog of Liu et al.'s Table 2 (DETR on COCO) on the synthetic set.

For each bit-width and method: quantize the DETR's transformer (every encoder/decoder Linear, the input
projection, Q·K^T and attn·V of every self- and cross-attention; backbone and heads float unless
``quantize_backbone`` / ``quantize_head``), calibrate on unlabelled ``detr-synth:val`` canvases (source
images disjoint from the test split's), and measure COCO mAP with pycocotools on ``detr-synth:test``.
Each calibrated model is evaluated twice: encoder+decoder quantized (``scope: "encoder+decoder"``), and
with the decoder's ops switched back to float (``scope: "encoder"``: the same calibration, since the
encoder's units are calibrated before any decoder unit). Rows carry ``task: "detection"``, ``map``,
``map50``, ``map_float`` and the load average of the machine (the run time depends on it).

With several calibration ``seeds`` (each draws its own calibration canvases and seeds torch), every row is
the mean over them: ``map``, ``map50``, ``map75`` and ``calib_seconds`` are means, ``map_std`` the standard
deviation of mAP, ``seeds`` and ``map_per_seed`` / ``map50_per_seed`` / ``calib_seconds_per_seed`` the runs.
"""

from __future__ import annotations

import logging
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import vitq
from vitq.bench.results import load_rows, merge_rows
from vitq.bench.tables import VARIANT_FIELDS, variant_suffix
from vitq.data.sources import load_images
from vitq.eval.detection import evaluate_detection
from vitq.eval.size import model_size_mb
from vitq.models.base import get_adapter
from vitq.models.loading import create_model, model_data_config
from vitq.nn.qops import quant_ops
from vitq.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

DETECTION_MODELS = {"detr-synth": ("vitq:detr-synth", "detr-synth:val", "detr-synth:test")}
#: the paper's Table 2 rows: MinMax (our "no search" baseline), Percentile, EasyQuant, the Liu ablation and
#: the full method, and MPTQ-ViT. Neither of MPTQ's parts fits DETR: OPT-m quantizes post-GELU inputs (DETR's
#: feed-forward layers use ReLU) and SQ-b folds into a LayerNorm that feeds only Linears (DETR's post-norm
#: LayerNorms feed the residual too); each fails with an UnsupportedModelError naming why, ``n/a`` in the table.
TABLE2_METHODS = ("minmax", "percentile", "easyquant", "liu2021-sim", "liu2021-sim+rank", "liu2021", "mptq")


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def run_detection_bench(model_name: str = "detr-synth", *, bits: tuple[int, ...] = (8, 6, 4),
                        methods: tuple[str, ...] = TABLE2_METHODS, num_calib: int = 32, num_test: int | None = None,
                        out_dir: str | Path = "benchmarks/results", seeds: tuple[int, ...] = (0,),
                        quantize_backbone: bool = False,
                        command: str | None = None, batch_size: int = 50,
                        onnx_methods: tuple[str, ...] = ("liu2021",),
                        mp_methods: tuple[str, ...] = ("nuclear",),
                        config_overrides: dict | None = None) -> list[dict]:
    """Run the Table 2 analog for one detection model; rows are merged into ``<out_dir>/<model>.json`` as they
    finish (a failed method gets a row with its error, the others go on) and a markdown table is written.

    For ``onnx_methods`` at 8 bits or fewer, the encoder+decoder model is also exported to ONNX QDQ and
    evaluated in ONNX Runtime (``map_ort``, ``map50_ort`` in its row). For each of ``mp_methods`` and each
    bit-width below 8, when ``liu2021`` is among the ``methods``, a mixed-precision row: the Liu method with a plan from :func:`vitq.mp.search_plan` at the
    size of the uniform model (one bit-width per attention module and per FFN; a decoder layer's self- and
    cross-attention share one). ``config_overrides`` are :class:`vitq.QuantConfig` fields for every run (the CLI's
    ``--recon-iters``, ``--rotation``, ...); what they change of a recipe is in its rows and labels.

    Each configuration is calibrated once per seed of ``seeds`` (its own calibration canvases, drawn with
    that seed from the calibration split) and its rows hold the mean and the per-seed figures; the test
    images are drawn with the first seed (all of them unless ``num_test``). The ONNX Runtime figures are
    those of the last seed's model, beside that seed's simulation (``map_sim_ort``)."""
    overrides = dict(config_overrides or {})
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise vitq.errors.ConfigError(f"seeds must be one or more distinct integers, got {list(seeds)}")
    if model_name not in DETECTION_MODELS:
        raise vitq.errors.ConfigError(f"unknown detection benchmark model {model_name!r}; "
                                      f"choose from {sorted(DETECTION_MODELS)}")
    spec, calib_src, test_src = DETECTION_MODELS[model_name]
    command = command or "vitq " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = Path(out_dir) / f"{model_name}.json"
    model = create_model(spec)
    dc = model_data_config(model)
    forward = get_adapter(model).forward
    test = load_images(test_src, dc, num=num_test, seed=seeds[0])
    calibs = {seed: load_images(calib_src, dc, num=num_calib, seed=seed).images for seed in seeds}
    t0 = time.perf_counter()
    ref = evaluate_detection(model, test, forward=forward, batch_size=batch_size, progress=True, desc="float")
    base = {"model": model_name, "task": "detection", "num_test": ref.num_images, "num_objects": ref.num_objects,
            "map_float": round(ref.map, 4), "map50_float": round(ref.map50, 4), "top1": None, "top1_float": None,
            "command": command, "mixed_precision": False, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "test_data": test_src, "calib_data": calib_src,
            "quantize_backbone": quantize_backbone}
    rows = [{**base, "method": "float", "origin": "baseline", "w_bits": 32, "a_bits": 32, "scope": "none",
             "map": round(ref.map, 4), "map50": round(ref.map50, 4), "map75": round(ref.stats["map75"], 4),
             "size_mb": sum(p.numel() for p in model.parameters()) * 4 / 1e6, "calib_seconds": 0.0,
             "num_calib": 0, "eval_seconds": round(time.perf_counter() - t0, 2), "load_avg": _load()}]
    merge_rows(results, rows)
    log.info("%s float: mAP %.4f mAP50 %.4f on %d images", model_name, ref.map, ref.map50, ref.num_images)
    # the mixed-precision rows are the Liu method's: with it among the methods
    plan = [(b, m, None) for b in bits for m in methods]
    plan += [(b, "liu2021", mp) for mp in mp_methods for b in bits if b < 8 and "liu2021" in methods]
    for b, method, mp in tqdm(plan, desc=f"bench {model_name}", unit="run"):
        head = {**base, "method": method, "w_bits": b, "a_bits": b, "num_calib": int(calibs[seeds[0]].shape[0]),
                "seeds": list(seeds), "origin": vitq.QuantConfig(method=method, **overrides).recipe().origin,
                "load_avg_start": _load()}
        per_seed = []
        try:
            for seed in seeds:
                per_seed.append(_run_seed(model, calibs[seed], test, forward, b, method, mp, seed, quantize_backbone,
                                          overrides, ort=method in onnx_methods and b <= 8 and mp is None
                                          and seed == seeds[-1], batch_size=batch_size))
                log.info("%s %s W%dA%d seed %d: mAP %s (float %.4f), calib %.1fs", model_name, method, b, b, seed,
                         {k: round(v["map"], 4) for k, v in per_seed[-1]["scopes"].items()}, ref.map,
                         per_seed[-1]["calib_seconds"])
        except vitq.errors.VitqError as e:  # e.g. a recipe that needs a structure DETR does not have
            log.warning("%s W%dA%d on %s: %s", method, b, b, model_name, e)
            variant = {k: v for k, v in overrides.items() if k in VARIANT_FIELDS}
            row = {**head, **variant, "scope": "encoder+decoder", "map": None, "map50": None, "size_mb": None,
                   "calib_seconds": None, "error": f"{type(e).__name__}: {e}", "load_avg": _load()}
            rows.append(row)
            merge_rows(results, [row])
            continue
        new = [_seed_mean({**head, **per_seed[-1]["head"]}, per_seed, scope) for scope in ("encoder", "encoder+decoder")]
        rows += new
        merge_rows(results, new)
    write_detection_table(results, model_name)
    return rows


def _run_seed(model, calib: torch.Tensor, test, forward, b: int, method: str, mp: str | None, seed: int,
              quantize_backbone: bool, overrides: dict, *, ort: bool, batch_size: int) -> dict:
    """One calibration (one seed) of one configuration, evaluated encoder-only and encoder+decoder:
    ``{"head": row fields, "calib_seconds": s, "scopes": {scope: figures}}``."""
    head, mp_plan = {}, {}
    if mp is not None:
        from vitq.mp import search_plan

        t_mp = time.perf_counter()
        mp_plan = search_plan(model, calib, method=mp, bits=b, seed=seed).plan
        head.update(mixed_precision=True, mp_method=mp, mp_seconds=round(time.perf_counter() - t_mp, 2),
                    bits_min=min(e["w_bits"] for e in mp_plan.values()),
                    bits_max=max(e["w_bits"] for e in mp_plan.values()))
    cfg = vitq.QuantConfig(w_bits=b, a_bits=b, method=method, seed=seed, quantize_backbone=quantize_backbone,
                           plan=mp_plan, **overrides)
    head.update(origin=cfg.recipe().origin, **cfg.recipe().row_fields(cfg))
    q = vitq.quantize(model, cfg)
    rep = vitq.calibrate(q, calib, progress=False)
    scopes = {}
    decoder = [op for n, op in quant_ops(q).items() if ".decoder." in f".{n}"]
    for op in decoder:  # encoder-only: the same calibration, decoder ops in float
        op.set_enabled(False)
    for scope in ("encoder", "encoder+decoder"):
        if scope == "encoder+decoder":
            for op in decoder:
                op.set_enabled(True)
            vitq.freeze(q)
        t1 = time.perf_counter()
        m = evaluate_detection(q, test, forward=forward, batch_size=batch_size, progress=True,
                               desc=f"{method} W{b}A{b} seed {seed} {scope}")
        sizes = {n: (32 if not op.quant_enabled else op.quantizers()[1].bits)
                 for n, op in quant_ops(q).items() if op.has_weight}
        scopes[scope] = {"map": m.map, "map50": m.map50, "map75": m.stats["map75"],
                         "size_mb": round(model_size_mb(q, sizes), 4), "eval_seconds": time.perf_counter() - t1}
        if scope == "encoder+decoder" and ort:
            scopes[scope].update(_ort_map(q, test, batch_size), map_sim_ort=round(m.map, 4), ort_seed=seed)
    return {"head": head, "calib_seconds": rep.seconds, "scopes": scopes}


def _seed_mean(head: dict, per_seed: list[dict], scope: str) -> dict:
    """One row of ``scope``: the mean over the seeds' runs, their spread and the runs themselves."""
    figs = [r["scopes"][scope] for r in per_seed]
    maps = [f["map"] for f in figs]
    secs = [r["calib_seconds"] for r in per_seed]
    row = {**head, "scope": scope, "map": round(statistics.fmean(maps), 4),
           "map_std": round(statistics.stdev(maps), 4) if len(maps) > 1 else 0.0,
           "map50": round(statistics.fmean(f["map50"] for f in figs), 4),
           "map75": round(statistics.fmean(f["map75"] for f in figs), 4),
           "map_per_seed": [round(x, 4) for x in maps], "map50_per_seed": [round(f["map50"], 4) for f in figs],
           "size_mb": figs[-1]["size_mb"], "calib_seconds": round(statistics.fmean(secs), 2),
           "calib_seconds_per_seed": [round(x, 2) for x in secs],
           "eval_seconds": round(statistics.fmean(f["eval_seconds"] for f in figs), 2), "load_avg": _load()}
    row.update({k: v for k, v in figs[-1].items() if k in ("map_ort", "map50_ort", "ort_error", "map_sim_ort", "ort_seed")})
    return row


def _ort_map(q, test, batch_size: int) -> dict:
    """mAP of the quantized model exported to ONNX QDQ (in a temporary folder) and run in ONNX Runtime."""
    import tempfile

    from vitq.export.onnx_detr import OrtDetector, export_detr_onnx

    try:
        with tempfile.TemporaryDirectory() as d:
            path = export_detr_onnx(q, Path(d) / "model.onnx", example=test.images[:2])
            m = evaluate_detection(OrtDetector(path, threads=2), test, batch_size=batch_size, progress=True,
                                   desc="onnx")
    except (vitq.errors.VitqError, ImportError) as e:
        return {"ort_error": f"{type(e).__name__}: {e}"}
    return {"map_ort": round(m.map, 4), "map50_ort": round(m.map50, 4)}


def _label(r: dict, calib: bool = False) -> str:
    """A row's method as the table names it: the recipe, its mixed-precision plan, what flags changed of it
    and, where the table holds more than one calibration set size (``calib``), the size."""
    label = r["method"] + variant_suffix(r)
    if r.get("mixed_precision"):
        label += f" + MP ({r['mp_method']})"
    return label + (f" ({r.get('num_calib')} calibration canvases)" if calib else "")


def _cell(rows: list[dict], label: str, bits: int, scope: str, calib: bool) -> str:
    same = [r for r in rows if _label(r, calib) == label and r["w_bits"] == bits]
    # a run that failed before calibration has one row (no scope to split), shown in both tables
    r = next((r for r in same if r.get("scope") == scope), None) or next((r for r in same if r.get("error")), None)
    if r is None:
        return ""
    if r.get("map") is None:
        return "n/a" if str(r.get("error", "")).startswith("UnsupportedModelError") else "error"
    std = f" ± {100 * r['map_std']:.1f}" if len(r.get("seeds") or ()) > 1 else ""
    return f"{100 * r['map']:.1f}{std} ({100 * r['map50']:.1f})"


def write_detection_table(results: Path, model_name: str) -> Path:
    """``<model>.md``: mAP (mAP50) in %, methods x bit-widths, encoder+decoder and encoder-only."""
    rows = [r for r in load_rows(results) if r["model"] == model_name and r.get("task") == "detection"]
    fl = next((r for r in rows if r["method"] == "float"), None)
    bits = sorted({r["w_bits"] for r in rows if r["method"] != "float"}, reverse=True)
    calib = len({r.get("num_calib") for r in rows if r["method"] != "float"}) > 1
    methods = list(dict.fromkeys(_label(r, calib) for r in rows if r["method"] != "float"))
    lines = [f"# {model_name}: Liu et al. (2021) Table 2 analog (DETR, COCO mAP via pycocotools)", "",
             "Made by:", ""] + [f"    {c}" for c in sorted({r["command"] for r in rows})] + [""]
    if fl is not None:
        lines += [f"Float: mAP {100 * fl['map']:.1f}, mAP50 {100 * fl['map50']:.1f} on {fl['num_test']} test canvases "
                  f"({fl['num_objects']} objects). Cells: mAP (mAP50), %, the mean over the row's calibration "
                  f"seeds (± the standard deviation of mAP where more than one). Backbone "
                  f"{'quantized' if fl.get('quantize_backbone') else 'float'}, class/box heads float.", ""]
    for scope, title in (("encoder+decoder", "Encoder and decoder quantized"), ("encoder", "Encoder only quantized")):
        lines += [f"## {title}", "", "| method | " + " | ".join(f"W{b}A{b}" for b in bits) + " |",
                  "|---|" + "---|" * len(bits)]
        lines += [f"| {m} | " + " | ".join(_cell(rows, m, b, scope, calib) for b in bits) + " |" for m in methods]
        lines.append("")
    ort = [r for r in rows if r.get("map_ort") is not None]
    if ort:
        lines += ["## ONNX Runtime (QDQ export) vs simulation, encoder+decoder", "",
                  "The same calibrated model (one seed) in simulation and in ONNX Runtime.", "",
                  "| method | bits | seed | mAP sim | mAP ORT | mAP50 ORT |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | W{r['w_bits']}A{r['a_bits']} | {r.get('ort_seed', '')} | "
                  f"{100 * r.get('map_sim_ort', r['map']):.1f} | {100 * r['map_ort']:.1f} | {100 * r['map50_ort']:.1f} |"
                  for r in ort] + [""]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["## Not applicable (n/a) and errors", ""] + [f"- {_label(r, calib)} W{r['w_bits']}A{r['a_bits']}: {r['error']}" for r in errors] + [""]
    md = results.with_suffix(".md")
    atomic_write_text(md, "\n".join(lines))
    return md

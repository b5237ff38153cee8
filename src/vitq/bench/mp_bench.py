"""``vitq bench --mp``: mixed-precision rows (Liu et al. Table 1 "MP" and Table 4) in the results schema.

For each target bit-width b (the budget is the size of the uniform b-bit model) and each allocation
method (``nuclear``, ``hessian``, ``greedy``): search a plan on the calibration images, calibrate it with
the Liu et al. method (or another recipe), evaluate. A uniform b-bit row calibrated the same way is the
comparison at the same size; it carries exactly the key of :func:`vitq.bench.runner.run_bench`'s row for
that configuration, so it replaces that row only when the configuration is identical. MP rows carry
``mixed_precision=True``, ``mp_method`` and ``budget_mb``, which are part of the row key, so they never
replace uniform rows.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import vitq
from vitq.bench.results import load_rows, merge_rows
from vitq.bench.runner import BENCH_MODELS, _test_set
from vitq.bench.tables import same_setting
from vitq.data.sources import load_images
from vitq.errors import ConfigError
from vitq.eval.metrics import agreement, predict, sqnr_db, top1
from vitq.eval.size import model_size_mb
from vitq.models.loading import create_model, model_data_config
from vitq.mp.probe import CHEAP_INITS
from vitq.mp.search import MP_METHODS, search_plan
from vitq.quantizers.uniform import MAX_BITS, MIN_BITS
from vitq.recipes import get_recipe
from vitq.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

#: a plan's size must lie within this fraction below its budget (Liu et al. report sizes within ~0.5%)
BUDGET_TOLERANCE = 0.01
#: ``mp_method`` of a row -> :func:`search_plan` arguments; ``nuclear`` is Eq. 17 as printed (attention map),
#: ``nuclear-output`` our variant with the MSA output as the MSA feature
MP_VARIANTS = {
    "nuclear": {"method": "nuclear"},
    "nuclear-output": {"method": "nuclear", "msa_feature": "output"},
    "hessian": {"method": "hessian"},
    "greedy": {"method": "greedy"},
}


def _evaluate(q, test, ref) -> dict:
    t0 = time.perf_counter()
    out = predict(q, test.images)
    return {"top1": top1(out, test.labels), "agreement": agreement(out, ref),
            "logits_sqnr_db": round(sqnr_db(ref, out), 3), "eval_seconds": round(time.perf_counter() - t0, 2)}


def _bits_under(model, budget_mb: float) -> int:
    """The largest uniform bit-width whose model fits ``budget_mb``."""
    fits = [b for b in range(MIN_BITS, MAX_BITS + 1)
            if model_size_mb(vitq.quantize(model, vitq.QuantConfig(w_bits=b, a_bits=b))) <= budget_mb]
    if not fits:
        raise ConfigError(f"budget {budget_mb} MB is below the uniform {MIN_BITS}-bit model")
    return fits[-1]


def run_mp_rows(model_name: str, *, mp_methods: Sequence[str] = MP_METHODS, bits: Sequence[int] = (6, 8),
                method: str = "liu2021", num_calib: int = 32, num_test: int | None = None,
                out_dir: str | Path | None = "benchmarks/results", seed: int = 0, search: str = "fast",
                candidates: Sequence[int] | None = None, granularity: str = "module", uniform: bool = True,
                budgets_mb: Sequence[float] = (), command: str | None = None, model=None,
                config_overrides: dict | None = None, greedy_images: int | None = None) -> list[dict]:
    """Mixed-precision benchmark rows for one model; merged into ``<out_dir>/<model_name>.json`` when
    ``out_dir`` is given (with a ``<model_name>-mp.md`` table). ``model`` overrides the bench model (tests).

    Each of ``bits`` gives a budget equal to the uniform model's size (plus a uniform row unless
    ``uniform=False``); each of ``budgets_mb`` an explicit budget, searched around (and with the
    ``w_bits``/``a_bits`` of) the largest uniform bit-width that fits it, with no uniform row.
    ``config_overrides`` adds QuantConfig fields to every calibration (e.g. ``{"fully_quantized": True}``
    for the "5-bit MP, fully quantized" setting of MPTQ-ViT); the rows carry them as in ``vitq bench``.
    ``greedy_images``: the greedy search measures its loss on the first this many calibration images
    (default all; its cost is a forward of them per unit and step). Recorded in the greedy rows.
    """
    if model_name not in BENCH_MODELS:
        raise ConfigError(f"unknown benchmark model {model_name!r}; choose from {sorted(BENCH_MODELS)}")
    bad = [m for m in mp_methods if m not in MP_VARIANTS]
    if bad:
        raise ConfigError(f"mp methods {bad} are unknown; choose from {', '.join(MP_VARIANTS)}")
    bm = BENCH_MODELS[model_name]
    command = command or "vitq " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = Path(out_dir) / f"{model_name}.json" if out_dir is not None else None
    model = model if model is not None else create_model(bm.spec)
    dc = model_data_config(model)
    calib = load_images(bm.calib, dc, num=num_calib, seed=seed)
    test = _test_set(bm, dc, num_test or bm.default_num_test, seed)
    ref = predict(model, test.images)
    top1_float = top1(ref, test.labels)
    base = {"model": model_name, "num_test": int(test.images.shape[0]), "num_calib": int(calib.images.shape[0]),
            "top1_float": top1_float, "command": command, "method": method, "search": search,
            "origin": get_recipe(method).origin, "threads": torch.get_num_threads(), "torch": torch.__version__}
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        if results is not None:
            merge_rows(results, [row])

    targets = [(b, None) for b in bits] + [(_bits_under(model, mb), mb) for mb in budgets_mb]
    for b, budget_mb in targets:
        cfg = dict(w_bits=b, a_bits=b, method=method, seed=seed, search=search, **(config_overrides or {}))
        qc = vitq.QuantConfig(**cfg)
        flags = qc.recipe().row_fields(qc)  # smoothing / quantizer choices: part of the row key
        if uniform and budget_mb is None:
            q = vitq.quantize(model, vitq.QuantConfig(**cfg))
            rep = vitq.calibrate(q, calib.images, progress=False)
            vitq.freeze(q)
            row = {**base, "w_bits": b, "a_bits": b, "mixed_precision": False, "size_mb": model_size_mb(q),
                   "calib_seconds": round(rep.seconds, 2), **flags, **_evaluate(q, test, ref)}
            log.info("%s uniform W%dA%d %s: top-1 %.4f, %.4f MB", model_name, b, b, method, row["top1"], row["size_mb"])
            record(row)
        for mp in mp_methods:
            # the probe's cheap intervals follow the calibration recipe when it is itself a cheap one
            init = method if method in CHEAP_INITS else "percentile"
            extra = {"greedy_images": greedy_images} if mp == "greedy" and greedy_images else {}
            res = search_plan(model, calib.images, **MP_VARIANTS[mp], bits=b, budget_mb=budget_mb,
                              candidates=candidates, granularity=granularity, init=init, seed=seed, **extra)
            q = vitq.quantize(model, vitq.QuantConfig(**cfg, plan=res.plan))
            rep = vitq.calibrate(q, calib.images, progress=False)
            vitq.freeze(q)
            size = model_size_mb(q)
            gap = (res.budget_mb - size) / res.budget_mb
            row = {**base, "w_bits": b, "a_bits": b, "mixed_precision": True, "mp_method": mp,
                   "budget_mb": round(res.budget_mb, 6), "size_mb": size, "within_budget": size <= res.budget_mb + 1e-9,
                   "budget_gap_pct": round(100 * gap, 3), "within_1pct": 0 <= gap <= BUDGET_TOLERANCE,
                   "search_seconds": round(res.seconds, 2), "calib_seconds": round(rep.seconds, 2),
                   "candidates": res.candidates, "granularity": granularity, "search_init": init,
                   "unit_bits": res.unit_bits, **flags, **extra,
                   **_evaluate(q, test, ref)}
            if not row["within_1pct"]:
                log.warning("%s %s MP at %d bits: size %.4f MB is %.2f%% below the budget %.4f MB (not within %.0f%%)",
                            model_name, mp, b, size, 100 * gap, res.budget_mb, 100 * BUDGET_TOLERANCE)
            log.info("%s %s MP%d %s: top-1 %.4f, %.4f MB (budget %.4f), search %.1fs", model_name, mp, b, method,
                     row["top1"], size, res.budget_mb, res.seconds)
            record(row)
    if results is not None:
        write_mp_table(results, model_name)
    return rows


def mp_table(rows: list[dict], model: str) -> str:
    """Markdown: uniform vs mixed precision at the same sizes (Liu et al. Table 1 "MP" rows, Table 4 timing)."""
    mp = [r for r in rows if r["model"] == model and r.get("mixed_precision")]
    out = ["| Calib. method | Allocation | W/A bits | Size (MB) | Budget (MB) | Top-1 (%) | Search (s) | Calib. (s) | Calib. imgs | Test imgs |",
           "|---|---|---|---|---|---|---|---|---|---|"]

    def key(r: dict) -> tuple:
        return r["method"], r["w_bits"], r["num_calib"], r["num_test"], bool(r.get("fully_quantized"))

    for method, b, n_calib, n_test, fq in sorted({key(r) for r in mp}, key=lambda k: (-k[1], k)):
        sel = [r for r in mp if key(r) == (method, b, n_calib, n_test, fq)]
        # the uniform row of the same recipe and quantizer choices (fully quantized, softmax quantizer, ...)
        uni = next((r for r in rows if same_setting(r, sel[0]) and r["w_bits"] == b and r["a_bits"] == b), None)
        order = list(MP_VARIANTS)
        for r in ([uni] if uni else []) + sorted(sel, key=lambda r: order.index(r["mp_method"])
                                                 if r["mp_method"] in order else 99):
            alloc = r.get("mp_method", "uniform")
            bits = f"{b} MP" if r.get("mixed_precision") else str(b)
            label = method + (", fully quantized" if fq else "")
            out.append(f"| {label} | {alloc} | {bits} | {r['size_mb']:.4f} | "
                       f"{r['budget_mb'] if r.get('budget_mb') else '-'} | {100 * r['top1']:.2f} | "
                       f"{r.get('search_seconds', '-')} | {r['calib_seconds']} | {n_calib} | {n_test} |")
    return "\n".join(out)


def write_mp_table(results: Path, model_name: str) -> Path:
    rows = load_rows(results)
    md = results.with_name(f"{model_name}-mp.md")
    cmds = sorted({r["command"] for r in rows if r["model"] == model_name and r.get("mixed_precision")})
    atomic_write_text(md, f"# {model_name}: mixed precision (Liu et al. Sec. 3.3, Table 1 MP rows, Table 4)\n\n"
                      "Made by:\n\n" + "\n".join(f"    {c}" for c in cmds) + "\n\n" + mp_table(rows, model_name) + "\n")
    return md

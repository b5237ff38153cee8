"""The report of one quantization run: ``report.md`` and its PNGs, next to the saved model.

It reads what ``vitq quantize`` saves in ``vitq.json`` (the run summary, the calibration report with each
op's objective before/after the interval search, per-op bits and intervals) and, when the models are at
hand, adds sizes and the per-op output SQNR against the float model (:func:`vitq.report.layer_sqnr`).

    write_run_report("runs/fmnist-vit-liu2021-w8a8")                  # a saved directory
    write_run_report(qmodel, "out/", float_model=model, images=calib[:8],
                     summary={...}, calibration=report.to_dict())    # in memory, right after calibrate
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn as nn

from vitq.errors import ConfigError, QuantizedModelFormatError, VitqError
from vitq.report.layer_sqnr import layer_sqnr
from vitq.report.plots import legend_outside, plot_by_block, pyplot, save

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOT_FILES = {"objective": "report-objective.png", "layer_sqnr": "report-layer-sqnr.png",
              "intervals": "report-intervals.png", "bits": "report-bits.png"}


# -- numbers ---------------------------------------------------------------------------------------------

def objective_view(config: dict) -> tuple[str, bool]:
    """How to show the method's calibration loss: (axis label, whether the value shown is ``1 + loss``).

    Similarity objectives are stored as ``-similarity`` (Liu et al. Eq. 12, EasyQuant's cosine), so
    ``1 + loss`` is ``1 - similarity`` (plus the ranking term of Eq. 11 on attention scores): >= 0, small
    is good, readable on a log axis. MSE-like objectives are shown as they are.
    """
    from vitq.config import QuantConfig
    try:
        spec = QuantConfig.from_dict(config).recipe().search
    except (ConfigError, KeyError, TypeError, ValueError):
        return "calibration loss", False
    if spec.objective == "pearson":
        return "1 - Pearson r" + (" (+ ranking on attn scores)" if spec.ranking else ""), True
    if spec.objective == "cosine":
        return "1 - cosine similarity", True
    if spec.objective == "hessian":
        return "Hessian-weighted output error", False
    if spec.objective == "mse":
        return "output MSE", False
    return "calibration loss", False


def _shown(loss: float | None, one_plus: bool) -> float:
    if loss is None:
        return math.nan
    return 1.0 + loss if one_plus else loss


def _fmt(x, spec: str = ".4g", pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{100 * x:.2f}" if pct else format(x, spec)
    return str(x)


def _fmt_scale(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{sum(values) / len(values):.4g} (mean of {len(values)})"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# -- loading ---------------------------------------------------------------------------------------------

def _from_dir(path: Path) -> tuple[dict, nn.Module | None]:
    from vitq.export.packing import load_saved

    meta_file = path / "vitq.json"
    if not meta_file.is_file():
        raise QuantizedModelFormatError(f"{path} is not a saved vitq model (no vitq.json)")
    meta = json.loads(meta_file.read_text())
    try:
        qmodel = load_saved(path)
    except VitqError as e:  # e.g. a custom module with no spec to rebuild: the report keeps what vitq.json has
        log.warning("report: cannot load the model in %s (%s); sizes and layer SQNR are left out", path, e)
        qmodel = None
    return meta, qmodel


def _float_from_spec(meta: dict, qmodel: nn.Module) -> nn.Module | None:
    """The float model rebuilt from the saved spec, or None when there is no spec or when the rebuilt
    weights are not the ones that were quantized (e.g. a random-init ``timm:`` spec without checkpoint)."""
    from vitq.models.loading import float_model_from_spec
    from vitq.nn.qops import quant_ops

    spec = meta.get("model_spec")
    if not spec:
        log.warning("report: no saved model spec to rebuild the float model: per-op output SQNR left out")
        return None
    model = float_model_from_spec(spec)
    # Tensors outside the quantized ops are saved unchanged (unless a recipe folded something into them):
    # they must match, or the rebuilt model is another model and its SQNR would mean nothing.
    prefixes = tuple(n + "." for n in quant_ops(qmodel))
    q_state = qmodel.state_dict()
    shared = [(k, v) for k, v in model.state_dict().items() if k in q_state and not k.startswith(prefixes)]
    if not shared or any(q_state[k].shape != v.shape or not torch.equal(q_state[k].cpu(), v.cpu()) for k, v in shared):
        log.warning("report: the float model rebuilt from %s (checkpoint %s) has other weights than the quantized "
                    "one: per-op output SQNR left out", spec["spec"], spec.get("checkpoint"))
        return None
    return model


# -- plots -----------------------------------------------------------------------------------------------

def _plot_objective(ops: list[dict], label: str, one_plus: bool, title: str, path: Path) -> Path:
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    before = {o["name"]: _shown(o.get("loss_start"), one_plus) for o in ops}
    after = {o["name"]: _shown(o.get("loss_end"), one_plus) for o in ops}
    colors: dict[str, str] = {}
    blocks = plot_by_block(ax, after, colors=colors)
    plot_by_block(ax, before, style=":", marker="x", alpha=0.45, blocks=blocks, colors=colors, labels=False)
    vals = [v for v in [*before.values(), *after.values()] if not math.isnan(v)]
    if vals and all(v > 0 for v in vals):
        ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    proxies = [Line2D([], [], color="k", ls="-", marker="o", label="after search"),
               Line2D([], [], color="k", ls=":", marker="x", alpha=0.45, label="before (initial interval)")]
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles + proxies, labels + [p.get_label() for p in proxies], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    return save(fig, path)


def _plot_layer_sqnr(sqnr: dict[str, float], num_images: int, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    finite = {n: v for n, v in sqnr.items() if math.isfinite(v)}
    plot_by_block(ax, {n: (v if math.isfinite(v) else math.nan) for n, v in sqnr.items()})
    if finite:
        worst = min(finite, key=finite.get)
        ax.set_title(f"{title}\nper-op output SQNR vs float on {num_images} images; lowest: {worst} "
                     f"{finite[worst]:.1f} dB", fontsize=10)
    else:
        ax.set_title(f"{title}\nper-op output SQNR vs float on {num_images} images: no finite value "
                     "(outputs identical to float)", fontsize=10)
    ax.set_xlabel("block")
    ax.set_ylabel("output SQNR (dB), higher is better")
    ax.grid(True, alpha=0.25)
    legend_outside(ax)
    return save(fig, path)


def _plot_intervals(ops: dict[str, dict], title: str, path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9.5, 6.5), sharex=True)
    colors: dict[str, str] = {}
    a = {n: _mean(o.get("a_scale") or []) for n, o in ops.items()}
    b = {n: _mean(o.get("b_scale") or []) for n, o in ops.items()}
    blocks = plot_by_block(ax1, a, colors=colors)
    plot_by_block(ax2, b, blocks=blocks, colors=colors, labels=False)
    for ax, vals in ((ax1, a), (ax2, b)):
        if all(v > 0 for v in vals.values() if not math.isnan(v)):
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
    ax1.set_ylabel("input interval Δ_X / Δ_A")
    ax2.set_ylabel("weight Δ_W (mean over channels)\nor second operand Δ_B")
    ax2.set_xlabel("block")
    ax1.set_title(title)
    legend_outside(ax1)
    return save(fig, path)


def _plot_bits(ops: dict[str, dict], title: str, path: Path) -> Path:
    plt = pyplot()
    names = list(ops)
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * len(names) + 3.5), 4.5))
    w = 0.4
    ax.bar([i - w / 2 for i in x], [ops[n].get("b_bits", 0) if ops[n].get("b_is_weight") else 0 for n in names], w,
           color="tab:blue", label="weight bits")
    ax.bar([i + w / 2 for i in x], [ops[n].get("a_bits", 0) for n in names], w, color="tab:orange",
           label="activation bits")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=6)
    ax.set_ylabel("bits")
    ax.set_title(title)
    legend_outside(ax)
    return save(fig, path)


# -- the report ------------------------------------------------------------------------------------------

def _summary_rows(meta: dict, summary: dict, calibration: dict, sizes: dict) -> list[tuple[str, str]]:
    cfg = meta.get("config", {})
    mixed = bool(cfg.get("plan")) or bool(summary.get("mixed_precision"))
    spec = (meta.get("model_spec") or {}).get("spec")
    bits = f"W{cfg.get('w_bits')}A{cfg.get('a_bits')}" + (" + mixed-precision plan" if mixed else "")
    top1, top1_f = summary.get("top1"), summary.get("top1_float")
    change = None if top1 is None or top1_f is None else top1 - top1_f  # quantized - float: < 0 is worse
    rows = [
        ("model", str(summary.get("model") or spec or meta.get("adapter", "-"))),
        ("method", str(cfg.get("method", summary.get("method", "-")))),
        ("bits", bits),
        ("calibration images", _fmt(summary.get("num_calib", calibration.get("num_images")))),
        ("calibration seconds", _fmt(summary.get("calib_seconds", calibration.get("seconds")), ".2f")),
        ("test images", _fmt(summary.get("num_test"))),
        ("top-1 float (%)", _fmt(top1_f, pct=True)),
        ("top-1 quantized (%)", _fmt(top1, pct=True)),
        ("top-1 change vs float (points, negative = worse)", "-" if change is None else f"{100 * change:+.2f}"),
        ("agreement with float (%)", _fmt(summary.get("agreement"), pct=True)),
        ("logits SQNR (dB)", _fmt(summary.get("logits_sqnr_db"), ".2f")),
        ("size float (MB)", _fmt(sizes.get("float_mb"), ".4f")),
        ("size quantized (MB)", _fmt(sizes.get("quant_mb", summary.get("size_mb")), ".4f")),
    ]
    if sizes.get("float_mb") and sizes.get("quant_mb"):
        rows.append(("compression", f"{sizes['float_mb'] / sizes['quant_mb']:.2f}x"))
    for k in ("mp_method", "budget_mb", "plan_file"):
        if k in summary:
            rows.append((k.replace("_", " "), _fmt(summary[k])))
    cov = meta.get("coverage") or {}
    for k, label in (("linear", "Linears"), ("conv", "convolutions"), ("attn_matmul", "attention products")):
        if k in cov:
            rows.append((f"{label} quantized / total", f"{cov[k]['quantized']} / {cov[k]['total']}"))
    if cov.get("kept_float"):
        rows.append(("kept float (head, plan)", "; ".join(cov["kept_float"])))
    if cov.get("uncaptured"):
        rows.append(("NOT quantized (vitq cannot capture)", "; ".join(cov["uncaptured"])))
    return rows


def _op_table(ops: dict[str, dict], calib_ops: dict[str, dict], sqnr: dict[str, float] | None,
              one_plus: bool, label: str) -> list[str]:
    head = ["#", "op", "role", "W/B bits", "A bits", f"{label} before", "after", "rounds", "Δ_A", "Δ_W / Δ_B"]
    if sqnr is not None:
        head.append("out SQNR (dB)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (name, o) in enumerate(ops.items()):
        c = calib_ops.get(name, {})
        cells = [str(i), f"`{name}`", str(o.get("role", c.get("role", "-"))), _fmt(o.get("b_bits")),
                 _fmt(o.get("a_bits")), _fmt(_shown(c.get("loss_start"), one_plus)),
                 _fmt(_shown(c.get("loss_end"), one_plus)), _fmt(c.get("rounds")),
                 _fmt_scale(o.get("a_scale") or []), _fmt_scale(o.get("b_scale") or [])]
        if sqnr is not None:
            cells.append(_fmt(sqnr.get(name), ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_run_report(source: str | Path | nn.Module, out_dir: str | Path | None = None, *,
                     float_model: nn.Module | None = None, images: torch.Tensor | None = None,
                     summary: dict | None = None, calibration: dict | None = None,
                     plots: bool = True) -> Path:
    """Write ``report.md`` and its PNGs for one quantized model; returns the path of ``report.md``.

    Args:
        source: a directory written by ``vitq quantize`` / ``save_quantized`` / ``save_packed`` (its
            ``vitq.json`` gives the summary and calibration report), or a quantized model in memory.
        out_dir: where to write; defaults to ``source`` when it is a directory.
        float_model: the float model, for the per-op output SQNR (rebuilt from the saved spec when
            ``source`` is a directory and ``images`` are given).
        images: a few preprocessed calibration images ``(N, C, H, W)`` for the per-op output SQNR; without
            them that section is left out.
        summary, calibration: the run summary and ``CalibrationReport.to_dict()``; they override what a
            saved directory records.
        plots: write the PNGs (needs matplotlib, the ``report`` extra); without it the report is text only.
    """
    from vitq.eval.size import model_size_mb
    from vitq.export.serialization import quantized_meta

    if isinstance(source, nn.Module):
        if out_dir is None:
            raise VitqError("write_run_report: give out_dir when the source is a model")
        qmodel, meta = source, quantized_meta(source)
    else:
        meta, qmodel = _from_dir(Path(source))
        out_dir = source if out_dir is None else out_dir
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = meta.get("extra") or {}
    summary = summary if summary is not None else extra.get("summary") or {}
    calibration = calibration if calibration is not None else extra.get("calibration") or {}
    ops: dict[str, dict] = meta.get("ops") or {}
    calib_ops = {o["name"]: o for o in calibration.get("ops", []) if "name" in o}
    label, one_plus = objective_view(meta.get("config", {}))

    sizes: dict[str, float] = {}
    if qmodel is not None:
        sizes["quant_mb"] = model_size_mb(qmodel)
        ref_params = float_model.parameters() if float_model is not None else qmodel.parameters()
        sizes["float_mb"] = sum(p.numel() for p in ref_params) * 4 / 1e6
    sqnr = None
    if images is not None and qmodel is not None:
        if float_model is None:
            float_model = _float_from_spec(meta, qmodel)
        if float_model is not None:
            sqnr = layer_sqnr(float_model, qmodel, images)

    cfg = meta.get("config", {})
    title = (f"{summary.get('model') or (meta.get('model_spec') or {}).get('spec') or meta.get('adapter', '')} "
             f"{cfg.get('method', '')} W{cfg.get('w_bits')}A{cfg.get('a_bits')}").strip()
    mixed = bool(cfg.get("plan")) or len({(o.get("a_bits"), o.get("b_bits")) for o in ops.values()}) > 1
    has_objective = any(c.get("loss_end") is not None for c in calib_ops.values())

    made: dict[str, Path] = {}
    if plots:
        try:
            pyplot()
        except ImportError:
            log.warning("report: matplotlib is not installed (pip install vitq[report]); writing text only")
            plots = False
    if plots:
        if has_objective:
            made["objective"] = _plot_objective([calib_ops[n] for n in ops if n in calib_ops], label, one_plus,
                                                f"{title}: calibration objective per op", out / PLOT_FILES["objective"])
        if sqnr is not None:
            made["layer_sqnr"] = _plot_layer_sqnr(sqnr, int(images.shape[0]), title, out / PLOT_FILES["layer_sqnr"])
        if ops:
            made["intervals"] = _plot_intervals(ops, f"{title}: quantization intervals", out / PLOT_FILES["intervals"])
        if mixed and ops:
            made["bits"] = _plot_bits(ops, f"{title}: per-op bit-widths", out / PLOT_FILES["bits"])

    md = [f"# Quantization report: {title}", "", "## Summary", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in _summary_rows(meta, summary, calibration, sizes)]
    md += ["", "## Per-op calibration", ""]
    if has_objective:
        md.append(f"Objective: {label} before and after the interval search (lower is better).")
    else:
        md.append(f"Method {cfg.get('method', '?')} sets intervals without an objective search "
                  "(no before/after values).")
    md += [""] + _op_table(ops, calib_ops, sqnr, one_plus, label)
    if "objective" in made:
        md += ["", f"![calibration objective per op]({made['objective'].name})"]
    if sqnr is not None:
        finite = {n: v for n, v in sqnr.items() if math.isfinite(v)}
        md += ["", "## Per-op output SQNR vs float", "",
               f"Output of every quantized op against the float model's module of the same name, on "
               f"{int(images.shape[0])} calibration images, end to end (includes the error from upstream)."]
        if finite:
            drops = sorted(finite, key=finite.get)[:3]
            md.append("Lowest: " + ", ".join(f"`{n}` {finite[n]:.2f} dB" for n in drops) + ".")
        if "layer_sqnr" in made:
            md += ["", f"![per-op output SQNR]({made['layer_sqnr'].name})"]
    elif images is not None:
        md += ["", "## Per-op output SQNR vs float", "",
               "Not computed: no float model with the quantized model's weights (no saved spec, or the spec "
               "rebuilds other weights: give a checkpoint); see the log."]
    if mixed:
        md += ["", "## Bit-widths (mixed precision)", "",
               "Plan: `" + json.dumps(cfg.get("plan", {}))[:2000] + "`"]
        if "bits" in made:
            md += ["", f"![per-op bits]({made['bits'].name})"]
    if "intervals" in made:
        md += ["", "## Intervals", "", f"![quantization intervals]({made['intervals'].name})"]
    path = out / REPORT_FILE
    path.write_text("\n".join(md) + "\n")
    log.info("wrote run report %s (%d plots)", path, len(made))
    return path


"""The report of a benchmark results file (``benchmarks/results/<model>.json``): plots next to the tables.

Plots: top-1 against bit-width for every uniform method (float as a dashed line), the ablation bars
(similarity, + ranking, + bias correction, all), mixed-precision rows as size against top-1 beside the
uniform points, and peer methods (``ort-*``, ``ptq4vit``, ``repq-vit``, ``mptq*``) against Liu et al.
Any method name is accepted; rows lacking an optional key are drawn without it, and rows without the
keys a plot needs (``method``, ``top1``, bits, size) are left out of that plot and counted in the report.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from vitq.bench.results import REQUIRED
from vitq.bench.tables import ABLATION, METHOD_LABELS, table1, table3
from vitq.recipes import RECIPES
from vitq.report.plots import PALETTE, legend_outside, pyplot, safe_name, save

log = logging.getLogger(__name__)

ABLATION_METHODS = tuple(a[0] for a in ABLATION)  # sim, sim+rank, sim+bc, liu2021 (all)
OURS = "liu2021"


def is_peer(method: str) -> bool:
    """ONNX Runtime's quantizer and every recipe outside the Liu et al. tables (MPTQ-ViT and the peers)."""
    r = RECIPES.get(method)
    return method.startswith("ort-") or (r is not None and not (r.table or r.ablation))


def is_mixed(row: dict) -> bool:
    return bool(row.get("mixed_precision")) or row.get("mp_method") is not None


def _label(row: dict) -> str:
    m = row.get("method", "?")
    label = METHOD_LABELS.get(m, m)
    if row.get("a_bits") is not None and row.get("a_bits") != row.get("w_bits"):
        label += f" (A{row['a_bits']})"
    if row.get("fully_quantized"):
        label += " (fully quant.)"
    return label


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _uniform(rows: list[dict]) -> list[dict]:
    """Quantized uniform-precision rows that can go on a top-1 vs bits axis."""
    return [r for r in rows if r.get("method") not in (None, "float") and not is_mixed(r)
            and _num(r.get("top1")) is not None and _num(r.get("w_bits")) is not None]


def _float_levels(rows: list[dict]) -> dict[float, str]:
    """Distinct float top-1 values (one per test-set size) -> legend label."""
    levels: dict[float, str] = {}
    for r in rows:
        v = _num(r.get("top1")) if r.get("method") == "float" else _num(r.get("top1_float"))
        if v is not None:
            levels.setdefault(round(v, 6), f"float ({r['num_test']} test)" if r.get("num_test") else "float")
    return levels


def _calib_sizes(rows: list[dict]) -> list:
    return sorted({r.get("num_calib") for r in rows}, key=lambda n: (n is None, n or 0))


def _panels(plt, n: int, height: float = 4.2):
    fig, axes = plt.subplots(1, n, figsize=(6.0 * n + 2.5, height), squeeze=False, sharey=True)
    return fig, list(axes[0])


def _float_lines(ax, rows: list[dict]) -> None:
    for i, (v, label) in enumerate(sorted(_float_levels(rows).items(), reverse=True)):
        ax.axhline(100 * v, color="k", ls="--", lw=1, alpha=0.8 - 0.2 * min(i, 3), label=label)


def _lines_vs_bits(ax, rows: list[dict], colors: dict[str, str], faded: set[str] = frozenset()) -> None:
    lines: dict[str, dict[float, float]] = defaultdict(dict)
    for r in rows:
        lines[_label(r)][_num(r["w_bits"])] = 100 * _num(r["top1"])  # a later row replaces an earlier one
    for label, pts in lines.items():
        xs = sorted(pts)
        color = colors.setdefault(label, PALETTE[len(colors) % len(PALETTE)])
        ax.plot(xs, [pts[x] for x in xs], marker="o", color=color, label=label,
                ls="--" if label in faded else "-", alpha=0.6 if label in faded else 1.0)


def _bits_axis(ax, rows: list[dict]) -> None:
    bits = sorted({_num(r["w_bits"]) for r in rows})
    ax.set_xticks(bits)
    ax.set_xticklabels([f"W{int(b)}" for b in bits])
    ax.set_xlabel("weight bits (activations at the same bits unless labelled)")
    ax.grid(True, alpha=0.25)


def plot_top1_vs_bits(rows: list[dict], title: str, path: Path, *, methods=None, reference=()) -> Path | None:
    """Top-1 (%) against bit-width, one line per method, one panel per calibration-set size; float dashed.

    ``methods`` filters the rows (a predicate on the method name); ``reference`` methods are drawn faded."""
    uni = [r for r in _uniform(rows) if methods is None or methods(r["method"]) or r["method"] in reference]
    if not uni:
        return None
    plt = pyplot()
    sizes = _calib_sizes(uni)
    fig, axes = _panels(plt, len(sizes))
    colors: dict[str, str] = {}
    faded = {_label(r) for r in uni if r["method"] in reference}
    for ax, n in zip(axes, sizes):
        sel = [r for r in uni if r.get("num_calib") == n]
        _lines_vs_bits(ax, sel, colors, faded)
        _float_lines(ax, [r for r in rows if r.get("num_calib") in (n, 0, None) or r.get("method") == "float"])
        _bits_axis(ax, sel)
        ax.set_title(f"{n} calibration images" if n is not None else "calibration size not recorded", fontsize=10)
    axes[0].set_ylabel("top-1 (%)")
    legend_outside(axes[-1], axes[:-1])
    fig.suptitle(title)
    return save(fig, path)


def plot_ablation(rows: list[dict], title: str, path: Path) -> Path | None:
    """Bars: the Liu et al. variants (Table 3) at each bit-width, one panel per calibration-set size."""
    abl = [r for r in _uniform(rows) if r["method"] in ABLATION_METHODS]
    if not any(r["method"] != OURS for r in abl):
        return None
    plt = pyplot()
    sizes = _calib_sizes([r for r in abl if r["method"] != OURS])
    fig, axes = _panels(plt, len(sizes))
    width = 0.8 / len(ABLATION_METHODS)
    lo = min(100 * _num(r["top1"]) for r in abl)
    for ax, n in zip(axes, sizes):
        sel = [r for r in abl if r.get("num_calib") == n]
        configs = sorted({(_num(r["w_bits"]), _num(r.get("a_bits"))) for r in sel}, key=lambda c: (-c[0], -(c[1] or 0)))
        for j, method in enumerate(ABLATION_METHODS):
            xs, ys = [], []
            for i, (w, a) in enumerate(configs):
                r = next((r for r in reversed(sel) if r["method"] == method
                          and (_num(r["w_bits"]), _num(r.get("a_bits"))) == (w, a)), None)
                if r is not None:
                    xs.append(i + (j - (len(ABLATION_METHODS) - 1) / 2) * width)
                    ys.append(100 * _num(r["top1"]))
            bars = ax.bar(xs, ys, width, color=PALETTE[j], label=METHOD_LABELS.get(method, method))
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels([f"W{int(w)}A{int(a)}" if a is not None else f"W{int(w)}" for w, a in configs])
        ax.set_title(f"{n} calibration images", fontsize=10)
        ax.set_ylim(max(0.0, lo - 5), None)  # zoom in: the variants differ by a few points
        ax.grid(True, axis="y", alpha=0.25)
        _float_lines(ax, rows)
    axes[0].set_ylabel("top-1 (%)")
    legend_outside(axes[-1], axes[:-1])
    fig.suptitle(title)
    return save(fig, path)


def plot_mixed_precision(rows: list[dict], title: str, path: Path) -> Path | None:
    """Scatter: model size (MB) against top-1 (%), mixed-precision rows per allocation method beside the
    uniform rows of the same calibration methods (labelled with their bits) and the float model."""
    mp = [r for r in rows if is_mixed(r) and _num(r.get("top1")) is not None and _num(r.get("size_mb")) is not None]
    if not mp:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    base_methods = {r.get("method") for r in mp}
    uni = [r for r in _uniform(rows) if r["method"] in base_methods and _num(r.get("size_mb")) is not None]
    if uni:
        ax.scatter([r["size_mb"] for r in uni], [100 * r["top1"] for r in uni], marker="s", color="0.45",
                   label="uniform (" + ", ".join(sorted(map(str, base_methods))) + ")", zorder=2)
        for r in uni:
            ax.annotate(f"W{r['w_bits']}A{r.get('a_bits', '?')}", (r["size_mb"], 100 * r["top1"]), fontsize=7,
                        xytext=(4, -9), textcoords="offset points")
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in mp:
        groups[str(r.get("mp_method") or "mixed")].append(r)
    for i, (name, rs) in enumerate(sorted(groups.items())):
        ax.scatter([r["size_mb"] for r in rs], [100 * r["top1"] for r in rs], marker="o^vD<>"[i % 6], s=45,
                   color=PALETTE[i % len(PALETTE)], label=f"MP {name}", zorder=3)
    for r in rows:
        if r.get("method") == "float" and _num(r.get("top1")) is not None and _num(r.get("size_mb")) is not None:
            ax.scatter([r["size_mb"]], [100 * r["top1"]], marker="*", s=120, color="k", label="float", zorder=3)
            break
    for r in mp:
        if _num(r.get("budget_mb")) is not None:
            ax.axvline(r["budget_mb"], color="0.7", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("model size (MB, log scale); dotted: MP budgets")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    legend_outside(ax)
    return save(fig, path)


def _all_rows_table(rows: list[dict]) -> list[str]:
    head = ["method", "W", "A", "MP", "calib imgs", "test imgs", "top-1 (%)", "drop", "agree (%)", "size (MB)",
            "calib (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def key(r):
        return (is_mixed(r), r.get("method") != "float", str(r.get("method")), -(_num(r.get("w_bits")) or 0),
                _num(r.get("num_calib")) or 0)

    def f(x, spec=".2f", scale=1.0):
        v = _num(x)
        return "-" if v is None else format(scale * v, spec)

    for r in sorted(rows, key=key):
        top1, fl = _num(r.get("top1")), _num(r.get("top1_float"))
        drop = "-" if top1 is None or fl is None or r.get("method") == "float" else f"{100 * (fl - top1):+.2f}"
        mp = str(r.get("mp_method") or "yes") if is_mixed(r) else ""
        out.append("| " + " | ".join([
            METHOD_LABELS.get(str(r.get("method")), str(r.get("method", "?"))), str(r.get("w_bits", "-")),
            str(r.get("a_bits", "-")), mp, str(r.get("num_calib", "-")), str(r.get("num_test", "-")),
            f(top1, scale=100), drop, f(r.get("agreement"), scale=100), f(r.get("size_mb"), ".4f"),
            f(r.get("calib_seconds"), ".1f")]) + " |")
    return out


def plot_map_vs_bits(rows: list[dict], title: str, path: Path) -> Path | None:
    """Detection rows (``task: "detection"``): COCO mAP (%) against bit-width, one line per method (mixed
    precision labelled), one panel per quantized scope (encoder+decoder, encoder only); float dashed."""
    det = [r for r in rows if r.get("task") == "detection" and _num(r.get("map")) is not None
           and r.get("method") != "float" and _num(r.get("w_bits")) is not None]
    if not det:
        return None
    plt = pyplot()
    scopes = [s for s in ("encoder+decoder", "encoder") if any(r.get("scope") == s for r in det)]
    fig, axes = _panels(plt, len(scopes))
    colors: dict[str, str] = {}
    fl = next((r for r in rows if r.get("task") == "detection" and r.get("method") == "float"), None)
    for ax, scope in zip(axes, scopes):
        lines: dict[str, dict[float, float]] = defaultdict(dict)
        for r in det:
            if r.get("scope") == scope:
                label = f"{r['method']} + MP ({r['mp_method']})" if r.get("mixed_precision") else r["method"]
                lines[label][_num(r["w_bits"])] = 100 * _num(r["map"])
        for label, pts in lines.items():
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker="o", label=label,
                    color=colors.setdefault(label, PALETTE[len(colors) % len(PALETTE)]))
        if fl is not None and _num(fl.get("map")) is not None:
            ax.axhline(100 * fl["map"], color="k", ls="--", lw=1, label="float")
        _bits_axis(ax, [r for r in det if r.get("scope") == scope])
        ax.set_title(f"{scope} quantized", fontsize=10)
    axes[0].set_ylabel("COCO mAP@[.5:.95] (%)")
    legend_outside(axes[-1], axes[:-1])
    fig.suptitle(title)
    return save(fig, path)


def write_bench_report(results_json: str | Path, out_dir: str | Path | None = None, *,
                       model: str | None = None) -> Path:
    """Write ``<name>-report.md`` with its PNGs for one benchmark results file; returns the markdown path.

    Args:
        results_json: ``{"rows": [...]}`` as written by ``vitq bench`` (:mod:`vitq.bench.results`).
        out_dir: where to write (default: next to the results file).
        model: the model whose rows to report (default: the file's name if rows carry it, else the most
            frequent model in the file).
    """
    path = Path(results_json)
    doc = json.loads(path.read_text())
    all_rows = [r for r in (doc.get("rows", []) if isinstance(doc, dict) else doc) if isinstance(r, dict)]
    models = [r.get("model") for r in all_rows]
    if model is None:
        model = path.stem if path.stem in models else max(set(models), key=models.count, default=path.stem)
    rows = [r for r in all_rows if r.get("model") in (model, None)]
    out = Path(out_dir) if out_dir is not None else path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(path.stem)
    detection = [r for r in rows if r.get("task") == "detection"]  # mAP rows: their own plot and table
    unusable = [r for r in rows if r not in detection and (r.get("method") is None or _num(r.get("top1")) is None)]

    made: dict[str, Path | None] = {}
    try:
        pyplot()
        plots = True
    except ImportError:
        log.warning("bench report: matplotlib is not installed (pip install vitq[report]); writing tables only")
        plots = False
    if plots:
        made["Top-1 against bit-width"] = plot_top1_vs_bits(
            rows, f"{model}: top-1 vs bit-width (uniform precision)", out / f"{stem}-top1-vs-bits.png",
            methods=lambda m: not is_peer(m) and (m not in ABLATION_METHODS or m == OURS))
        made["Ablation (Liu et al. Table 3)"] = plot_ablation(rows, f"{model}: ablation", out / f"{stem}-ablation.png")
        made["Mixed precision: size against top-1"] = plot_mixed_precision(
            rows, f"{model}: mixed precision vs uniform", out / f"{stem}-mp.png")
        if any(r.get("task") == "detection" for r in rows):
            made["COCO mAP against bit-width (detection)"] = plot_map_vs_bits(
                rows, f"{model}: COCO mAP vs bit-width", out / f"{stem}-map-vs-bits.png")
        if any(is_peer(str(r.get("method", ""))) for r in _uniform(rows)):
            made["Peer methods"] = plot_top1_vs_bits(
                rows, f"{model}: peer methods vs Liu et al. (dashed: reference)", out / f"{stem}-peers.png",
                methods=is_peer, reference=(OURS, "minmax"))

    complete = [r for r in rows if all(k in r for k in REQUIRED)]
    md = [f"# {model}: benchmark report", "", f"From `{path}`: {len(rows)} rows"
          + (f" ({len(unusable)} without method or top-1, left out of the plots)" if unusable else "")
          + (f"; {len(rows) - len(complete)} lack required keys and are only in the last table"
             if len(complete) < len(rows) else "") + "."]
    cmds = sorted({str(r["command"]) for r in rows if r.get("command")})
    if cmds:
        md += ["", "Made by:", ""] + [f"    {c}" for c in cmds]
    for heading, png in made.items():
        if png is not None:
            md += ["", f"## {heading}", "", f"![{heading}]({png.name})"]
    if detection:
        md += ["", f"Detection rows: {len(detection)}; the methods x bit-widths tables (mAP, mAP50) are in "
               f"`{path.with_suffix('.md').name}` (`vitq.bench.detection`)."]
    for heading, fn in (() if detection and len(detection) == len(rows) else
                        (("Table 1: methods x bit-widths", table1), ("Table 3: ablation", table3))):
        try:
            text = fn(complete, model)
        except (KeyError, TypeError, ValueError) as e:  # a row with a key of an unexpected type
            log.warning("bench report: %s not made: %r", heading, e)
            text = f"\n(not made: a row has an unexpected value: {e!r})"
        if text.strip():
            md += ["", f"## {heading}", text]
    if len(detection) < len(rows):
        md += ["", "## All rows", ""] + _all_rows_table([r for r in rows if r not in detection])
    md_path = out / f"{stem}-report.md"
    md_path.write_text("\n".join(md) + "\n")
    log.info("wrote bench report %s (%d plots)", md_path, sum(p is not None for p in made.values()))
    return md_path

"""Markdown tables in the layout of Liu et al. Table 1 (methods x bit-widths) and Table 3 (ablation)."""

from __future__ import annotations

METHOD_LABELS = {
    "minmax": "MinMax", "percentile": "Percentile", "easyquant": "EasyQuant", "mse": "MSE",
    "liu2021": "Liu et al. (ours)", "liu2021-sim": "Similarity", "liu2021-sim+rank": "Similarity + Ranking",
    "liu2021-sim+bc": "Similarity + Bias corr.",
}
TABLE1_METHODS = ("minmax", "percentile", "easyquant", "mse", "liu2021")
ABLATION = (("liu2021-sim", "yes", "", ""), ("liu2021-sim+rank", "yes", "yes", ""),
            ("liu2021-sim+bc", "yes", "", "yes"), ("liu2021", "yes", "yes", "yes"))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table1(rows: list[dict], model: str) -> str:
    """Methods by W/A bits, one block per calibration size: top-1 (%), drop, size (MB), calibration s."""
    rows = [r for r in rows if r["model"] == model and not r.get("mixed_precision")]
    out = []
    fl = next((r for r in rows if r["method"] == "float"), None)
    for n_calib in sorted({r["num_calib"] for r in rows if r["method"] != "float"}):
        out.append(f"\n**{model}**, {n_calib} calibration images"
                   + (f", {fl['num_test']} test images, float top-1 {_pct(fl['top1'])}%, {fl['size_mb']:.2f} MB" if fl else ""))
        out.append("\n| Method | W-bit | A-bit | Top-1 (%) | Drop | Size (MB) | Calib. (s) |")
        out.append("|---|---|---|---|---|---|---|")
        sel = [r for r in rows if r["num_calib"] == n_calib and r["method"] in TABLE1_METHODS]
        for r in sorted(sel, key=lambda r: (-r["w_bits"], -r["a_bits"], TABLE1_METHODS.index(r["method"]))):
            drop = r["top1_float"] - r["top1"]
            out.append(f"| {METHOD_LABELS.get(r['method'], r['method'])} | {r['w_bits']} | {r['a_bits']} | "
                       f"{_pct(r['top1'])} | {100 * drop:+.2f} | {r['size_mb']:.2f} | {r['calib_seconds']:.1f} |")
    return "\n".join(out)


def table3(rows: list[dict], model: str) -> str:
    """The ablation: similarity, ranking, bias correction, per bit-width."""
    rows = [r for r in rows if r["model"] == model and not r.get("mixed_precision")]
    out = []
    for n_calib in sorted({r["num_calib"] for r in rows if r["method"] in dict((a[0], 1) for a in ABLATION)}):
        bits = sorted({(r["w_bits"], r["a_bits"]) for r in rows if r["num_calib"] == n_calib and r["method"] == "liu2021"},
                      reverse=True)
        out.append(f"\n**{model}** ablation, {n_calib} calibration images")
        out.append("\n| Similarity | Ranking | Bias corr. | " + " | ".join(f"W{w}A{a} top-1 (%)" for w, a in bits) + " |")
        out.append("|---|---|---|" + "---|" * len(bits))
        for method, sim, rank, bc in ABLATION:
            cells = []
            for w, a in bits:
                r = next((r for r in rows if r["method"] == method and r["num_calib"] == n_calib
                          and (r["w_bits"], r["a_bits"]) == (w, a)), None)
                cells.append(_pct(r["top1"]) if r else "-")
            out.append(f"| {sim} | {rank} | {bc} | " + " | ".join(cells) + " |")
    return "\n".join(out)

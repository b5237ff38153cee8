"""Markdown tables in the layout of Liu et al. Table 1 (methods x bit-widths) and Table 3 (ablation)."""

from __future__ import annotations

from vitq.recipes import RECIPES, recipe_names
from vitq.recipes.base import RECON_SETTINGS

METHOD_LABELS = {
    "minmax": "MinMax", "percentile": "Percentile", "easyquant": "EasyQuant", "mse": "MSE",
    "liu2021": "Liu et al. (ours)", "liu2021-sim": "Similarity", "liu2021-sim+rank": "Similarity + Ranking",
    "liu2021-sim+bc": "Similarity + Bias corr.", "gptq": "GPTQ", "liu2021-pc": "Liu et al., per-channel W",
    "liu2021-gptq": "Liu et al., per-channel W + GPTQ",
}
# Every list below is read from the recipe registry (vitq.recipes): a new recipe lands in the tables
# by its flags (table / ablation / peer), never by editing this file.
TABLE1_METHODS = tuple(recipe_names(table=True))
# Table 3 rows: (method, similarity, ranking, bias correction), the full method last.
ABLATION = tuple(sorted(((n, "yes" if RECIPES[n].search.objective else "", "yes" if RECIPES[n].search.ranking else "",
                          "yes" if RECIPES[n].search.bias_correction else "") for n in recipe_names(ablation=True)),
                        key=lambda row: row.count("yes")))


# weight_rounding / rotation: set only where a flag changed the recipe's own (Recipe.row_fields)
VARIANT_FIELDS = ("smoothing", "post_gelu", "post_softmax", "fully_quantized", "weight_rounding", "rotation",
                  "recon_iters") + tuple(f"recon_{k}" for k in RECON_SETTINGS)
ORT_METHODS = ("ort-minmax", "ort-percentile", "ort-entropy")  # vitq.peers.ort_static
COMPARE_METHODS = tuple(n for n, r in RECIPES.items() if not r.ablation or r.table) + ORT_METHODS
# The comparison proper: what ``vitq bench --peers`` runs (parts of a method, such as MPTQ-ViT's
# ``mptq-sqb``, go with the variants).
MAIN_COMPARE_METHODS = tuple(m for m in COMPARE_METHODS if m not in RECIPES or RECIPES[m].table or RECIPES[m].peer)


def same_setting(uniform: dict, mp_row: dict) -> bool:
    """``uniform`` is a uniform-precision row of ``mp_row``'s model, recipe, calibration and test images,
    search and quantizer choices (fully quantized, softmax quantizer, ...): what an MP row compares with."""
    return (not uniform.get("mixed_precision") and uniform["model"] == mp_row["model"]
            and uniform["method"] == mp_row["method"] and uniform["num_calib"] == mp_row["num_calib"]
            and uniform["num_test"] == mp_row["num_test"]
            and uniform.get("search", "fast") == mp_row.get("search", "fast")
            and all(uniform.get(k) == mp_row.get(k) for k in VARIANT_FIELDS))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def is_plain(row: dict) -> bool:
    """A row of a recipe as named: not a variant (extra quantizer flags) nor a reference-search rerun."""
    if row.get("search", "fast") != "fast" or row.get("fully_quantized") or row.get("weight_rounding"):
        return False
    if row["method"].startswith(("mptq", "ptq4vit", "repq")):  # their own quantizers are the recipe
        return not (row["method"].startswith("mptq") and row.get("post_softmax"))
    return not any(row.get(k) for k in VARIANT_FIELDS)


def variant_suffix(row: dict) -> str:
    """What a row changed of its recipe, as a label suffix (empty for the recipe as registered)."""
    label = ""
    if row.get("post_softmax") and not row["method"].startswith(("ptq4vit", "repq")):  # theirs by recipe
        label += f" + {row['post_softmax']} softmax quantizer"
    if row.get("fully_quantized"):
        label += ", fully quantized"
    if row.get("weight_rounding"):
        label += f", {row['weight_rounding']} weight rounding"
    if row.get("rotation"):
        label += f", rotation {row['rotation']}"
    if row.get("recon_iters") is not None:
        label += f", reconstruction {row['recon_iters']} steps"
    settings = [f"{k} {row['recon_' + k]:g}" for k in RECON_SETTINGS
                if row.get("recon_" + k) is not None]
    if settings:
        label += f" ({', '.join(settings)})"
    return label


def _variant_label(row: dict) -> str:
    return METHOD_LABELS.get(row["method"], row["method"]) + variant_suffix(row)


def table1(rows: list[dict], model: str) -> str:
    """Methods by W/A bits, one block per calibration size: top-1 (%), drop, size (MB), calibration s."""
    rows = [r for r in rows if r["model"] == model and not r.get("mixed_precision") and is_plain(r)]
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
    rows = [r for r in rows if r["model"] == model and not r.get("mixed_precision") and is_plain(r)]
    out = []
    partial = {a[0] for a in ABLATION if a[0] != "liu2021"}  # a size with the full method only has no ablation
    for n_calib in sorted({r["num_calib"] for r in rows if r["method"] in partial}):
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


def table_compare(rows: list[dict], model: str, variants: bool = False) -> str:
    """Methods by bit-width: top-1 (%) and calibration seconds, with the commands that made the rows.

    ``variants=False``: the comparison proper, each recipe as named (ours, MPTQ-ViT, the peers, ONNX
    Runtime), which ``vitq bench --peers`` makes in one command; one table per command that made
    rows (per calibration size). ``variants=True``: everything else at
    uniform precision: MPTQ-ViT's parts (``mptq-sqb``, ``mptq-optm``), extra quantizer flags and the
    fully-quantized setting.
    """
    rows = [r for r in rows if r["model"] == model and not r.get("mixed_precision") and r["method"] != "float"
            and r.get("search", "fast") == "fast"
            and (r["method"] in COMPARE_METHODS or any(r.get(k) for k in VARIANT_FIELDS))]
    if variants:
        rows = [r for r in rows if not is_plain(r) or r["method"] not in MAIN_COMPARE_METHODS]
    else:
        rows = [r for r in rows if is_plain(r) and r["method"] in MAIN_COMPARE_METHODS]
    out = []
    groups = []
    for n_calib in sorted({r["num_calib"] for r in rows}):
        sel = [r for r in rows if r["num_calib"] == n_calib]
        if variants:
            groups.append((n_calib, sel))
            continue
        # The comparison proper: one table per command that made its rows, the largest first, so a
        # table never mixes runs of different commands (different code, load or test images).
        by_cmd: dict[str, list[dict]] = {}
        for r in sel:
            by_cmd.setdefault(r["command"], []).append(r)
        groups += [(n_calib, g) for g in sorted(by_cmd.values(), key=len, reverse=True)]
    for n_calib, sel in groups:
        bits = sorted({(r["w_bits"], r["a_bits"]) for r in sel}, reverse=True)
        labels = []
        for r in sorted(sel, key=lambda r: (COMPARE_METHODS.index(r["method"]) if r["method"] in COMPARE_METHODS
                                            else len(COMPARE_METHODS), _variant_label(r))):
            if _variant_label(r) not in labels:
                labels.append(_variant_label(r))
        cmds = sorted({r["command"] for r in sel})
        out.append(f"\n**{model}**, {n_calib} calibration images: top-1 (%) / calibration seconds. Made by "
                   + ("one command" if len(cmds) == 1 else f"{len(cmds)} commands") + ":\n")
        out += [f"    {c}" for c in cmds]
        out.append("\n| Method | " + " | ".join(f"W{w}A{a}" for w, a in bits) + " |")
        out.append("|---|" + "---|" * len(bits))
        for label in labels:
            cells = []
            for w, a in bits:
                r = next((r for r in sel if _variant_label(r) == label and (r["w_bits"], r["a_bits"]) == (w, a)), None)
                cells.append(f"{_pct(r['top1'])} / {r['calib_seconds']:.0f}" if r else "-")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) if out else "\n(no rows)"


def _pair(a: dict, b: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    return " / ".join("-" if r.get(key) is None else fmt.format(scale * r[key]) for r in (a, b))


def table_search(rows: list[dict], model: str) -> str:
    """Reference-search rows next to the fast-search row of the same setting (``vitq bench --search``):
    top-1, agreement with the float model's predictions, logits SQNR and calibration seconds."""
    refs = [r for r in rows if r["model"] == model and r.get("search") == "reference" and not r.get("mixed_precision")]
    if not refs:
        return "\n(no reference-search rows)"
    out = ["\n| Method | W/A | Calib. / test images | Top-1 fast (%) | Top-1 reference (%) | Fast - ref. (pt) | "
           "Agreement fast / ref. (%) | Logits SQNR fast / ref. (dB) | Calib. s fast / ref. |",
           "|---|---|---|---|---|---|---|---|---|"]
    for ref in sorted(refs, key=lambda r: (r["method"], -r["w_bits"], r["num_calib"], r["num_test"])):
        fast = next((r for r in rows if r.get("search", "fast") == "fast" and same_setting(r, {**ref, "search": "fast"})
                     and (r["w_bits"], r["a_bits"]) == (ref["w_bits"], ref["a_bits"])), None)
        if fast is None:
            continue
        out.append(f"| {_variant_label(ref)} | W{ref['w_bits']}A{ref['a_bits']} | {ref['num_calib']} / {ref['num_test']} | "
                   f"{_pct(fast['top1'])} | {_pct(ref['top1'])} | {100 * (fast['top1'] - ref['top1']):+.2f} | "
                   f"{_pair(fast, ref, 'agreement', '{:.2f}', 100)} | {_pair(fast, ref, 'logits_sqnr_db', '{:.2f}')} | "
                   f"{_pair(fast, ref, 'calib_seconds', '{:.1f}')} |")
    return "\n".join(out)


def table_mp(rows: list[dict], model: str) -> str:
    """Mixed precision at the size of uniform b bits against uniform b bits (Liu et al. Table 4 layout)."""
    mp = [r for r in rows if r["model"] == model and r.get("mixed_precision")]
    if not mp:
        return "\n(no mixed-precision rows)"
    out = ["\n| Allocation | Calibration | Budget (MB) | Size (MB) | Top-1 (%) | Uniform top-1 (%) | Search (s) |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(mp, key=lambda r: (-r["budget_mb"], bool(r.get("fully_quantized")), r["method"],
                                       r.get("mp_method", ""))):
        # the uniform row of the same recipe, variant flags (fully quantized, ...) and size
        uni = next((u for u in rows if same_setting(u, r)
                    and abs(u["size_mb"] - r["budget_mb"]) <= 1e-3 * r["budget_mb"]), None)
        calib = r["method"] + (", fully quantized" if r.get("fully_quantized") else "")
        out.append(f"| {r.get('mp_method')} | {calib} | {r['budget_mb']:.4f} | {r['size_mb']:.4f} | "
                   f"{_pct(r['top1'])} | {_pct(uni['top1']) if uni else '-'} | {r.get('search_seconds', 0):.1f} |")
    return "\n".join(out)

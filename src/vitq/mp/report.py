"""Plot of a mixed-precision plan: bits per unit, and each unit's sensitivity, grouped by block."""

from __future__ import annotations

from pathlib import Path

from vitq.mp.plan import MPResult

KIND_COLORS = {"msa": "tab:blue", "mlp": "tab:orange", "op": "tab:green", "other": "tab:gray"}


def plot_plan(result: MPResult, path: str | Path) -> Path:
    """Write a PNG: top, the bit-width of every unit (bars, coloured by MSA / MLP / other, the target
    average as a line); bottom, its sensitivity at the chosen bits and at the lowest candidate (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.unit_bits)
    kinds = [result.units.get(n, {}).get("kind", "op") for n in names]
    colors = [KIND_COLORS.get(k, "tab:green") for k in kinds]
    x = list(range(len(names)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7.0, 0.45 * len(names) + 3.5), 6.5), sharex=True)
    ax1.bar(x, [result.unit_bits[n] for n in names], color=colors)
    ax1.axhline(result.average_bits, color="k", ls="--", lw=1, label=f"mean {result.average_bits:.2f} bits")
    lo = min(result.candidates) if result.candidates else 0
    hi = max(result.candidates) if result.candidates else max(result.unit_bits.values())
    ax1.set_ylim(max(0, lo - 1), hi + 0.5)
    ax1.set_ylabel("bits")
    ax1.set_title(f"{result.method} mixed precision: {result.size_mb:.4f} MB of {result.budget_mb:.4f} MB budget")
    handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLORS[k]) for k in dict.fromkeys(kinds) if k in KIND_COLORS]
    ax1.legend(handles + ax1.get_legend_handles_labels()[0],
               [k.upper() for k in dict.fromkeys(kinds) if k in KIND_COLORS] + ax1.get_legend_handles_labels()[1],
               fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if result.sensitivities:
        chosen = [result.sensitivities.get(n, {}).get(result.unit_bits[n], float("nan")) for n in names]
        lowest = [result.sensitivities.get(n, {}).get(lo, float("nan")) for n in names]
        w = 0.4
        ax2.bar([i - w / 2 for i in x], lowest, w, color=colors, alpha=0.45, label=f"at {lo} bits")
        ax2.bar([i + w / 2 for i in x], chosen, w, color=colors, label="at the chosen bits")
        if all(v > 0 for v in chosen + lowest if v == v):
            ax2.set_yscale("log")
        ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax2.set_ylabel("greedy: calibration KL" if result.method == "greedy" else "sensitivity Omega")
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Plot helpers shared by the run and benchmark reports: a headless figure, per-op values laid out by
transformer block (one line per op kind), saving. Same look as :func:`vitq.mp.report.plot_plan`
(legend outside on the right, small rotated labels, 110 dpi)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

DPI = 110
#: line colours of the op kinds, in the order kinds first appear
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def legend_outside(ax, others: Sequence = (), **kwargs) -> None:
    """A legend right of ``ax`` with the entries of ``ax`` and of the ``others`` axes, each label once."""
    entries: dict[str, object] = {}
    for a in (*others, ax):
        for h, label in zip(*a.get_legend_handles_labels()):
            entries.setdefault(label, h)
    if entries:
        ax.legend(list(entries.values()), list(entries), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  **kwargs)


def op_block(name: str) -> tuple[str, str]:
    """Split an op name into (block, kind) at its last numeric component: ``blocks.3.attn.qkv`` ->
    (``blocks.3``, ``attn.qkv``); a name without one is its own block (``patch_embed.proj``, ``head``).
    For labelling plots only; nothing is decided from the kind."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    if not idx or idx[-1] == len(parts) - 1:
        return name, name
    i = idx[-1]
    return ".".join(parts[: i + 1]), ".".join(parts[i + 1:])


def short_block(block: str) -> str:
    """A tick label: the last two components of a long block name (``vit.encoder.layer.3`` -> ``layer.3``)."""
    parts = block.split(".")
    return block if len(block) <= 14 or len(parts) <= 2 else ".".join(parts[-2:])


def plot_by_block(ax, values: dict[str, float], *, style: str = "-", marker: str = "o", alpha: float = 1.0,
                  label_suffix: str = "", blocks: Sequence[str] | None = None,
                  colors: dict[str, str] | None = None, labels: bool = True) -> list[str]:
    """Draw ``{op name: value}`` as one line per op kind across blocks (x: blocks in first-seen order, or
    ``blocks``); NaN values are left out. Returns the x categories so several calls share one axis.
    ``colors`` (kind -> colour) is filled in place so repeated calls colour a kind the same way; ``labels``
    False leaves the lines out of the legend."""
    colors = {} if colors is None else colors
    order = list(blocks) if blocks is not None else list(dict.fromkeys(op_block(n)[0] for n in values))
    pos = {b: i for i, b in enumerate(order)}
    lines: dict[str, list[tuple[int, float]]] = {}
    for name, v in values.items():
        block, kind = op_block(name)
        if v is None or (isinstance(v, float) and math.isnan(v)) or block not in pos:
            continue
        lines.setdefault(kind, []).append((pos[block], v))
    for kind, pts in lines.items():
        color = colors.setdefault(kind, PALETTE[len(colors) % len(PALETTE)])
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=style if len(pts) > 1 else "none", marker=marker,
                color=color, alpha=alpha, ms=5, label=f"{kind}{label_suffix}" if labels else None)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([short_block(b) for b in order], rotation=60, ha="right", fontsize=7)
    return order


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return _SAFE.sub("_", text).strip("_") or "x"

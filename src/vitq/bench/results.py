"""The benchmark results schema shared by every issue: ``benchmarks/results/<name>.json`` is
``{"rows": [...]}``, one row per run. Required keys are listed in :data:`REQUIRED`; rows may carry more.
Detection rows (``task: "detection"``) have ``top1``/``top1_float`` null and carry :data:`REQUIRED_DETECTION`.

Rows are merged by :func:`row_key`: re-running a configuration replaces its row, other rows stay, so
later benchmarks (mixed precision, MPTQ, peers) add to the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitq.recipes.base import RECON_SETTINGS
from vitq.utils.atomic import atomic_write_text

REQUIRED = ("model", "method", "w_bits", "a_bits", "mixed_precision", "top1", "top1_float", "size_mb",
            "calib_seconds", "num_calib", "num_test", "command")
REQUIRED_DETECTION = ("map", "map50", "map_float", "scope")
KEY_FIELDS = ("model", "method", "w_bits", "a_bits", "mixed_precision", "num_calib", "num_test", "mp_method",
              "budget_mb", "fully_quantized", "search", "smoothing", "post_gelu", "post_softmax",
              "weight_rounding", "rotation", "recon_iters", *(f"recon_{k}" for k in RECON_SETTINGS), "task", "scope",
              "quantize_backbone")


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def validate_row(row: dict) -> None:
    required = REQUIRED + (REQUIRED_DETECTION if row.get("task") == "detection" else ())
    missing = [k for k in required if k not in row]
    if missing:
        raise ValueError(f"benchmark row lacks {missing}: {row}")


def load_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("rows", [])


def merge_rows(path: str | Path, new_rows: list[dict], meta: dict | None = None) -> list[dict]:
    """Write ``new_rows`` into the results file, replacing rows with the same key; returns all rows."""
    for r in new_rows:
        validate_row(r)
    rows = load_rows(path)
    new_keys = {row_key(r) for r in new_rows}
    rows = [r for r in rows if row_key(r) not in new_keys] + list(new_rows)
    doc = {"rows": rows}
    if meta:
        doc["meta"] = meta
    atomic_write_text(path, json.dumps(doc, indent=1))
    return rows

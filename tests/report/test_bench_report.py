"""The benchmark report: plots and tables from a hand-made results file, any method name, missing keys."""

import json
import re

from PIL import Image

from vitq.report import write_bench_report
from vitq.report.bench_report import is_peer


def _row(method, bits, top1, **kw):
    r = {"model": "toy", "method": method, "w_bits": bits, "a_bits": bits, "mixed_precision": False, "top1": top1,
         "top1_float": 0.9, "size_mb": 2.0 * bits / 32, "calib_seconds": 1.0, "num_calib": 32, "num_test": 100,
         "command": "vitq bench --model toy"}
    r.update(kw)
    return r


def _write(tmp_path, rows, name="toy.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"rows": rows}))
    return path


def _pngs(md: str, folder) -> list[str]:
    names = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    for n in names:
        with Image.open(folder / n) as im:
            im.verify()
    return names


def test_full_file_all_plots_and_tables(tmp_path):
    rows = [_row("float", 32, 0.9, num_calib=0, calib_seconds=0.0)]
    for m, accs in {"minmax": (0.89, 0.85, 0.40), "liu2021": (0.90, 0.88, 0.70), "liu2021-sim": (0.895, 0.86, 0.6),
                    "liu2021-sim+rank": (0.897, 0.87, 0.65), "liu2021-sim+bc": (0.896, 0.87, 0.62),
                    "mptq": (0.9, 0.885, 0.75), "ort-minmax": (0.88, None, None)}.items():
        rows += [_row(m, b, a) for b, a in zip((8, 6, 4), accs) if a is not None]
    rows.append(_row("liu2021", 6, 0.885, mixed_precision=True, mp_method="nuclear", budget_mb=0.375, size_mb=0.37))
    md_path = write_bench_report(_write(tmp_path, rows), tmp_path / "out")
    md = md_path.read_text()
    assert md_path.name == "toy-report.md"
    assert sorted(_pngs(md, tmp_path / "out")) == ["toy-ablation.png", "toy-mp.png", "toy-peers.png",
                                                   "toy-top1-vs-bits.png"]
    assert "## Table 1: methods x bit-widths" in md and "| Liu et al. (ours) | 4 | 4 | 70.00 | +20.00 |" in md
    assert "## Table 3: ablation" in md and "| yes | yes |  | 89.70 | 87.00 | 65.00 |" in md
    assert "| ort-minmax | 8 | 8 |" in md and "| nuclear |" in md  # peers and MP rows in the full table


def test_unknown_methods_and_missing_keys(tmp_path):
    rows = [
        _row("minmax", 8, 0.85),
        {"model": "toy", "method": "brand-new", "w_bits": 6, "top1": 0.5},  # unknown method, most keys missing
        {"model": "toy", "method": "liu2021", "w_bits": 4, "a_bits": 8, "top1": 0.8},  # no num_calib, size...
        {"model": "toy", "method": "no-accuracy"},  # nothing to plot
        {"model": "toy", "method": "mystery", "mixed_precision": True, "top1": 0.7},  # MP without size
        {"model": "other", "method": "minmax", "w_bits": 8, "top1": 0.1},  # another model: ignored
    ]
    md = write_bench_report(_write(tmp_path, rows)).read_text()  # default out dir: next to the file
    assert _pngs(md, tmp_path) == ["toy-top1-vs-bits.png"]  # no ablation / MP (no size) / peer rows
    assert "6 rows" not in md and "5 rows (1 without method or top-1" in md
    assert "| brand-new | 6 | - |" in md and "| no-accuracy | - | - |" in md and "| 10.00 |" not in md
    assert "| MinMax | 8 | 8 | 85.00 | +5.00 |" in md  # the one complete row still makes Table 1


def test_real_results_file_shape(tmp_path):
    """Rows as ``vitq bench`` writes them (extra keys, float row, no ablation) and peers detection."""
    rows = [_row("float", 32, 0.898, num_calib=0, eval_seconds=64.7, threads=2),
            _row("easyquant", 8, 0.8978, agreement=0.9926, logits_sqnr_db=29.97, search="fast")]
    md = write_bench_report(_write(tmp_path, rows, "fmnist-vit.json"), model="toy").read_text()
    assert _pngs(md, tmp_path) == ["fmnist-vit-top1-vs-bits.png"] and "| EasyQuant | 8 | 8 |" in md
    assert "| 99.26 |" in md  # agreement column
    assert [m for m in ("ort-minmax", "ptq4vit", "repq-vit", "mptq-sqb", "liu2021", "minmax") if is_peer(m)] == [
        "ort-minmax", "ptq4vit", "repq-vit", "mptq-sqb"]

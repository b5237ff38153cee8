"""The run report: markdown with the summary and per-op table, valid PNGs, from memory and from a saved dir."""

import math
import re

import pytest
from conftest import make_tiny_vit
from PIL import Image

import vitq
from vitq.export.serialization import save_quantized
from vitq.nn.qops import quant_ops
from vitq.report import write_run_report
from vitq.report.run_report import PLOT_FILES, REPORT_FILE


def _run(images, **cfg):
    model = make_tiny_vit()
    q = vitq.quantize(model, vitq.QuantConfig(**cfg))
    rep = vitq.calibrate(q, images, progress=False)
    return model, vitq.freeze(q), rep


def _png_ok(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def _table_rows(md: str) -> dict[str, list[str]]:
    """Per-op table rows of report.md: {op name: cells}."""
    rows = {}
    for line in md.splitlines():
        m = re.match(r"\| \d+ \| `([^`]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_minmax_report_from_model(tmp_path, calib_images):
    model, q, rep = _run(calib_images[:6], w_bits=6, a_bits=6, method="minmax")
    summary = {"model": "tiny", "top1": 0.5, "top1_float": 0.625, "agreement": 0.75}
    path = write_run_report(q, tmp_path, float_model=model, images=calib_images[:3], summary=summary,
                            calibration=rep.to_dict())
    md = path.read_text()
    assert path == tmp_path / REPORT_FILE
    rows = _table_rows(md)
    assert list(rows) == list(quant_ops(q))  # every quantized op, in model order
    assert "| top-1 change vs float (points, negative = worse) | -12.50 |" in md and "| bits | W6A6 |" in md
    sqnr = [float(cells[-1]) for cells in rows.values()]  # last column: output SQNR, finite at W6A6
    assert all(math.isfinite(v) and 5 < v < 60 for v in sqnr)
    # float 0.2690 MB (67k params x 4 B); quantized: weights at 6 bits -> about 5x smaller
    size_f = float(re.search(r"\| size float \(MB\) \| ([\d.]+) \|", md).group(1))
    size_q = float(re.search(r"\| size quantized \(MB\) \| ([\d.]+) \|", md).group(1))
    assert size_f == pytest.approx(sum(p.numel() for p in model.parameters()) * 4 / 1e6, abs=1e-4)
    assert 3 < size_f / size_q < 6
    assert "without an objective search" in md  # minmax: no before/after objective, so no objective plot
    assert not (tmp_path / PLOT_FILES["objective"]).exists()
    for key in ("layer_sqnr", "intervals"):
        assert f"]({PLOT_FILES[key]})" in md and _png_ok(tmp_path / PLOT_FILES[key])


def test_search_report_objective_never_worse_and_bits_plot(tmp_path, calib_images):
    model, q, rep = _run(calib_images[:6], w_bits=4, a_bits=4, method="mse", num_candidates=6, max_iters=2,
                         plan={"re:blocks\\.1\\.mlp\\..*": {"w_bits": 8, "a_bits": 8}})
    md = write_run_report(q, tmp_path, calibration=rep.to_dict()).read_text()
    rows = _table_rows(md)
    before = [float(c[3]) for c in rows.values()]
    after = [float(c[4]) for c in rows.values()]
    assert all(a <= b for a, b in zip(after, before)) and sum(after) < sum(before)  # the search keeps the best
    assert rows["blocks.1.mlp.fc1"][1:3] == ["8", "8"] and rows["blocks.0.mlp.fc1"][1:3] == ["4", "4"]
    assert "output MSE before" in md and "## Bit-widths (mixed precision)" in md
    for key in ("objective", "bits", "intervals"):
        assert _png_ok(tmp_path / PLOT_FILES[key])
    assert "## Per-op output SQNR" not in md  # no images given


def test_report_from_saved_dir_uses_saved_summary(tmp_path, calib_images):
    model, q, rep = _run(calib_images[:4], w_bits=8, a_bits=8, method="minmax")
    run = save_quantized(q, tmp_path / "run", extra={"summary": {"model": "tiny-saved", "num_calib": 4},
                                                      "calibration": rep.to_dict()})
    # the timm spec of the tiny model has no checkpoint: rebuilt, it has other (random) weights, so the
    # report must leave the per-op SQNR out rather than compare against the wrong model
    md = write_run_report(run, images=calib_images[:2]).read_text()
    assert "# Quantization report: tiny-saved minmax W8A8" in md and "| calibration images | 4 |" in md
    assert set(_table_rows(md)) == set(quant_ops(q))
    assert "Not computed" in md and not (run / PLOT_FILES["layer_sqnr"]).exists()
    # with the float model given, the SQNR is computed against it
    md = write_run_report(run, tmp_path / "again", float_model=model, images=calib_images[:2]).read_text()
    assert "Lowest:" in md and _png_ok(tmp_path / "again" / PLOT_FILES["layer_sqnr"])


def test_text_only_without_plots(tmp_path, calib_images):
    _, q, rep = _run(calib_images[:4], method="minmax")
    write_run_report(q, tmp_path, calibration=rep.to_dict(), plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_FILE]

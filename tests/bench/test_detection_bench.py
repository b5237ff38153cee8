"""The Table 2 analog runs end to end on a tiny random DETR and a tiny COCO folder: rows, scopes, table."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("pycocotools")

from vitq import errors as vitq_errors  # noqa: E402
from vitq.bench import detection as bench  # noqa: E402
from vitq.data.synth_detection import SynthSpec, write_coco_split  # noqa: E402
from vitq.models.detr_synth import build_detr_synth, detr_synth_data_config  # noqa: E402
from vitq.models.zoo import ZooModel, register_zoo_model  # noqa: E402

TINY = dict(in_chans=1, image_size=64, widths=[8, 16, 16], depth=1, d_model=32, encoder_layers=1, decoder_layers=1,
            heads=4, ffn_dim=64, num_queries=5, num_labels=10)


@register_zoo_model("test-detr-tiny")
def _tiny() -> ZooModel:
    import torch

    torch.manual_seed(0)
    return ZooModel(build_detr_synth(TINY).eval(), detr_synth_data_config(TINY))


def _pool():
    rng = np.random.default_rng(0)
    imgs = np.zeros((20, 28, 28), np.uint8)
    imgs[:, 6:22, 6:22] = rng.integers(100, 255, size=(20, 1, 1))
    return imgs, np.arange(20) % 10


def test_detection_bench_rows_and_table(tmp_path, monkeypatch):
    spec = SynthSpec(canvas=64, min_size=12, max_size=28, max_objects=2)
    val = write_coco_split(tmp_path / "val", "val", 4, spec=spec, pool=_pool())
    test = write_coco_split(tmp_path / "test", "test", 4, spec=spec, pool=_pool())
    monkeypatch.setitem(bench.DETECTION_MODELS, "tiny", ("vitq:test-detr-tiny", f"coco:{val}", f"coco:{test}"))
    rows = bench.run_detection_bench("tiny", bits=(8, 6), methods=("minmax", "liu2021"), num_calib=4,
                                     out_dir=tmp_path, command="test", onnx_methods=("liu2021",),
                                     mp_methods=("nuclear",))
    mp_rows = [r for r in rows if r.get("mixed_precision")]
    assert [(r["w_bits"], r["mp_method"], r["scope"]) for r in mp_rows] == [(6, "nuclear", "encoder"),
                                                                          (6, "nuclear", "encoder+decoder")]
    assert mp_rows[1]["size_mb"] <= next(r for r in rows if r["method"] == "liu2021" and r["w_bits"] == 6
                                         and r["scope"] == "encoder+decoder")["size_mb"] + 1e-6
    rows = [r for r in rows if r["w_bits"] in (8, 32)]
    assert [(r["method"], r["scope"]) for r in rows] == [
        ("float", "none"), ("minmax", "encoder"), ("minmax", "encoder+decoder"),
        ("liu2021", "encoder"), ("liu2021", "encoder+decoder")]
    for r in rows:
        assert r["task"] == "detection" and 0.0 <= r["map"] <= 1.0 and r["num_test"] == 4
        assert r["map_float"] == rows[0]["map"] and "load_avg" in r and r["origin"]
    saved = json.loads((tmp_path / "tiny.json").read_text())["rows"]
    assert len(saved) == 11
    enc, full = rows[1], rows[2]
    assert enc["size_mb"] > full["size_mb"]  # decoder weights counted at 32 bits in the encoder-only row
    assert abs(rows[4]["map_ort"] - rows[4]["map"]) <= 0.005 and "map_ort" not in rows[2]
    md = (tmp_path / "tiny.md").read_text()
    assert "| minmax |" in md and "Encoder only" in md and "ONNX Runtime" in md and "liu2021 + MP (nuclear)" in md


def test_bench_report_plots_detection_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from vitq.report.bench_report import write_bench_report

    base = {"model": "d", "task": "detection", "command": "c", "mixed_precision": False, "top1": None,
            "top1_float": None, "map_float": 0.5, "num_calib": 32, "num_test": 10, "size_mb": 1.0, "calib_seconds": 1.0}
    rows = [{**base, "method": "float", "w_bits": 32, "a_bits": 32, "scope": "none", "map": 0.5, "map50": 0.8}]
    rows += [{**base, "method": m, "w_bits": b, "a_bits": b, "scope": s, "map": 0.4, "map50": 0.7}
             for m in ("minmax", "liu2021") for b in (8, 6) for s in ("encoder", "encoder+decoder")]
    (tmp_path / "d.json").write_text(json.dumps({"rows": rows}))
    md = write_bench_report(tmp_path / "d.json").read_text()
    assert "COCO mAP against bit-width" in md and (tmp_path / "d-map-vs-bits.png").is_file()


def test_recipe_that_does_not_apply_is_na_with_its_reason(tmp_path):
    """A recipe whose structure DETR lacks (MPTQ's OPT-m: no GELU) is 'n/a' in the table, its reason listed;
    any other failure stays 'error'."""
    base = {"model": "d", "task": "detection", "command": "c", "mixed_precision": False, "num_test": 4,
            "num_objects": 5, "w_bits": 8, "a_bits": 8, "map50": None}
    no_gelu = "UnsupportedModelError: recipe 'mptq': post-GELU quantizer 'optm' needs a GELU module"
    rows = [{**base, "method": "float", "w_bits": 32, "a_bits": 32, "scope": "none", "map": 0.5, "map50": 0.8},
            {**base, "method": "mptq", "scope": "encoder+decoder", "map": None, "error": no_gelu},
            {**base, "method": "liu2021", "scope": "encoder+decoder", "map": None, "error": "CalibrationError: nan"}]
    (tmp_path / "d.json").write_text(json.dumps({"rows": rows}))
    md = bench.write_detection_table(tmp_path / "d.json", "d").read_text()
    assert md.count("| mptq | n/a |") == 2 and md.count("| liu2021 | error |") == 2  # both scopes' tables
    assert "## Not applicable (n/a) and errors" in md and "needs a GELU module" in md


def test_config_overrides_reach_every_run_and_name_their_rows(tmp_path, monkeypatch):
    """``vitq bench --model detr-synth --recon-iters N`` (and the other recipe flags) change every run, and the
    rows and table say so; a second calibration size gets its own table rows."""
    spec = SynthSpec(canvas=64, min_size=12, max_size=28, max_objects=2)
    val = write_coco_split(tmp_path / "val", "val", 6, spec=spec, pool=_pool())
    test = write_coco_split(tmp_path / "test", "test", 4, spec=spec, pool=_pool())
    monkeypatch.setitem(bench.DETECTION_MODELS, "tiny", ("vitq:test-detr-tiny", f"coco:{val}", f"coco:{test}"))
    kw = dict(bits=(6,), methods=("liu2021-pc",), out_dir=tmp_path, command="test", onnx_methods=(), mp_methods=())
    plain = bench.run_detection_bench("tiny", num_calib=4, **kw)
    recon = bench.run_detection_bench("tiny", num_calib=6, config_overrides={"recon_iters": 5}, **kw)
    tuned = bench.run_detection_bench("tiny", num_calib=6, config_overrides={"recon_iters": 5, "recon_drop_prob": 0.0},
                                      **kw)
    assert all(r["recon_drop_prob"] == 0.0 for r in tuned if r["method"] != "float")
    assert all("recon_iters" not in r for r in plain)
    q_rows = [r for r in recon if r["method"] != "float"]
    assert q_rows and all(r["recon_iters"] == 5 and r["num_calib"] == 6 for r in q_rows)
    assert all(r["calib_seconds"] > 0 for r in q_rows)
    md = (tmp_path / "tiny.md").read_text()
    assert "| liu2021-pc (4 calibration canvases) |" in md
    assert "| liu2021-pc, reconstruction 5 steps (6 calibration canvases) |" in md
    assert "| liu2021-pc, reconstruction 5 steps (drop_prob 0) (6 calibration canvases) |" in md  # a row of its own


def test_several_seeds_make_one_row_with_their_mean_and_spread(tmp_path, monkeypatch):
    """``seeds=(0, 1, 2)``: each seed calibrates on its own canvases (and no mixed-precision rows without
    liu2021 among the methods); the row's mAP is the mean of the per-seed
    figures it lists, ``map_std`` their spread, and one seed's row equals the matching single-seed run."""
    import statistics

    import torch

    spec = SynthSpec(canvas=64, min_size=12, max_size=28, max_objects=2)
    val = write_coco_split(tmp_path / "val", "val", 12, spec=spec, pool=_pool())
    test = write_coco_split(tmp_path / "test", "test", 4, spec=spec, pool=_pool())
    monkeypatch.setitem(bench.DETECTION_MODELS, "tiny", ("vitq:test-detr-tiny", f"coco:{val}", f"coco:{test}"))
    kw = dict(bits=(8,), methods=("liu2021-sim",), num_calib=4, command="test", onnx_methods=("liu2021-sim",),
              mp_methods=("nuclear",))
    seen = []
    calibrate = bench.vitq.calibrate
    monkeypatch.setattr(bench.vitq, "calibrate", lambda q, images, **k: seen.append(images) or calibrate(q, images, **k))
    rows = bench.run_detection_bench("tiny", seeds=(0, 1, 2), out_dir=tmp_path / "three", **kw)
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    q = [r for r in rows if r["method"] != "float"]
    assert [r["scope"] for r in q] == ["encoder", "encoder+decoder"]  # no MP rows without liu2021 in the methods
    for r in q:
        assert r["seeds"] == [0, 1, 2] and len(r["map_per_seed"]) == 3 and len(r["calib_seconds_per_seed"]) == 3
        assert r["map"] == pytest.approx(statistics.fmean(r["map_per_seed"]), abs=1e-4)
        assert r["map_std"] == pytest.approx(statistics.stdev(r["map_per_seed"]), abs=1e-4)
    full = q[1]
    assert full["ort_seed"] == 2 and abs(full["map_ort"] - full["map_sim_ort"]) <= 0.005
    assert full["map_sim_ort"] == pytest.approx(full["map_per_seed"][2], abs=1e-4)
    one = bench.run_detection_bench("tiny", seeds=(1,), out_dir=tmp_path / "one", **kw)
    assert one[-1]["map_per_seed"] == [full["map_per_seed"][1]] and one[-1]["map_std"] == 0.0
    md = (tmp_path / "three" / "tiny.md").read_text()
    assert f"| liu2021-sim | {100 * full['map']:.1f} ± {100 * full['map_std']:.1f} (" in md
    with pytest.raises(vitq_errors.ConfigError, match="distinct"):
        bench.run_detection_bench("tiny", seeds=(1, 1), out_dir=tmp_path / "bad", **kw)

import json

import torch

from vitq.bench.mp_bench import run_mp_rows
from vitq.bench.results import REQUIRED, merge_rows
from vitq.models.loading import create_model


def tiny_gray_vit():
    torch.manual_seed(0)
    return create_model("timm:vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1,
                        num_heads=2, num_classes=10)


def test_mp_rows_have_the_schema_and_never_replace_uniform_rows(tmp_path):
    results = tmp_path / "fmnist-vit.json"
    other = {k: 0 for k in REQUIRED} | {"model": "fmnist-vit", "method": "minmax", "w_bits": 6, "a_bits": 6,
                                        "mixed_precision": False, "num_calib": 8, "num_test": 40, "top1": 0.123}
    merge_rows(results, [other | {"search": "reference"}])
    rows = run_mp_rows("fmnist-vit", mp_methods=("nuclear", "greedy"), bits=(6,), method="minmax", num_calib=8,
                       num_test=40, out_dir=tmp_path, command="test", model=tiny_gray_vit(), greedy_images=4)
    assert rows[2]["greedy_images"] == 4 and "greedy_images" not in rows[1]
    assert [r.get("mp_method") for r in rows] == [None, "nuclear", "greedy"]
    uniform, *mp = rows
    for r in rows:
        assert all(k in r for k in REQUIRED) and 0 <= r["top1"] <= 1 and r["num_test"] == 40
    for r in mp:
        assert r["mixed_precision"] is True and r["within_budget"]
        assert r["size_mb"] <= r["budget_mb"] and r["budget_mb"] == round(uniform["size_mb"], 6)
        assert r["search_seconds"] > 0 and r["unit_bits"]
    saved = json.loads(results.read_text())["rows"]
    assert len(saved) == 4  # the earlier uniform row (another key) survives next to the 3 new rows
    assert any(r["top1"] == 0.123 for r in saved)
    assert "| minmax | nuclear | 6 MP |" in (tmp_path / "fmnist-vit-mp.md").read_text()


def test_explicit_budget_rows_report_their_gap(tmp_path):
    import vitq
    from vitq.eval.size import model_size_mb

    model = tiny_gray_vit()
    u4 = model_size_mb(vitq.quantize(model, vitq.QuantConfig(w_bits=4, a_bits=4)))
    rows = run_mp_rows("fmnist-vit", mp_methods=("hessian",), bits=(), budgets_mb=(u4 * 1.1,), method="minmax",
                       num_calib=8, num_test=40, out_dir=None, command="test", model=model)
    (row,) = rows
    assert row["w_bits"] == 4 and row["budget_mb"] == round(u4 * 1.1, 6)
    assert u4 < row["size_mb"] <= row["budget_mb"]
    gap = (row["budget_mb"] - row["size_mb"]) / row["budget_mb"]
    assert row["budget_gap_pct"] == round(100 * gap, 3) and row["within_1pct"] == (gap <= 0.01)


def test_fully_quantized_mp_rows_carry_the_flag_and_keep_the_plain_rows(tmp_path):
    kw = dict(mp_methods=("nuclear",), bits=(5,), method="minmax", num_calib=8, num_test=40, out_dir=tmp_path,
              command="test", model=tiny_gray_vit())
    plain = run_mp_rows("fmnist-vit", **kw)
    fq = run_mp_rows("fmnist-vit", **kw, config_overrides={"fully_quantized": True})
    assert all(r.get("fully_quantized") is True for r in fq) and not any(r.get("fully_quantized") for r in plain)
    # Quantizing the LayerNorm inputs and the softmax outputs too changes the predictions' logits.
    assert all(f["logits_sqnr_db"] != p["logits_sqnr_db"] for f, p in zip(fq, plain))
    saved = json.loads((tmp_path / "fmnist-vit.json").read_text())["rows"]
    assert len(saved) == 4  # uniform + MP rows of both settings: the flag is part of the row key

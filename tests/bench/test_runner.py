import json

import pytest

from vitq.bench import runner
from vitq.bench.results import REQUIRED, merge_rows


@pytest.fixture
def tiny_bench(monkeypatch):
    spec = "timm:vit_tiny_patch16_224"
    monkeypatch.setitem(runner.BENCH_MODELS, "tiny", runner.BenchModel(spec, "fmnist-subset:calib", "fmnist-subset:test"))
    real_create = runner.create_model

    def create(s, **kw):
        return real_create(s, img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=2, num_classes=10)

    monkeypatch.setattr(runner, "create_model", create)


def test_bench_writes_schema_rows_and_tables(tmp_path, tiny_bench):
    rows = runner.run_bench("tiny", bits=(8, 4), methods=("minmax", "liu2021"), ablation=True, num_calib=(8,),
                            num_test=40, out_dir=tmp_path, command="vitq bench --test")
    doc = json.loads((tmp_path / "tiny.json").read_text())
    assert len(doc["rows"]) == 1 + 2 * (2 + 3)
    for r in doc["rows"]:
        assert all(k in r for k in REQUIRED)
        assert 0 <= r["top1"] <= 1 and r["num_test"] == 40
    q8 = next(r for r in rows if r["method"] == "liu2021" and r["w_bits"] == 8)
    q4 = next(r for r in rows if r["method"] == "liu2021" and r["w_bits"] == 4)
    fl = next(r for r in rows if r["method"] == "float")
    assert q4["size_mb"] < q8["size_mb"] < fl["size_mb"]
    md = (tmp_path / "tiny.md").read_text()
    assert "| Liu et al. (ours) | 8 | 8 |" in md and "| yes | yes | yes |" in md


def test_merge_replaces_same_key_and_keeps_others(tmp_path):
    row = {k: 0 for k in REQUIRED} | {"model": "m", "method": "minmax", "w_bits": 8, "a_bits": 8}
    merge_rows(tmp_path / "r.json", [row])
    merge_rows(tmp_path / "r.json", [row | {"top1": 0.5}, row | {"method": "liu2021"}])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(rows) == 2 and {r["top1"] for r in rows if r["method"] == "minmax"} == {0.5}
    with pytest.raises(ValueError, match="lacks"):
        merge_rows(tmp_path / "r.json", [{"model": "m"}])


def test_bench_peers_adds_onnx_runtime_rows_and_the_peer_recipes(tmp_path, tiny_bench):
    pytest.importorskip("onnxruntime")
    runner.run_bench("tiny", bits=(8,), methods=("minmax",), ablation=False, num_calib=(8,), num_test=40,
                     out_dir=tmp_path, command="vitq bench --peers", peers=True)
    rows = json.loads((tmp_path / "tiny.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"float", "minmax", *runner.PEER_METHODS, "ort-minmax", "ort-percentile",
                                           "ort-entropy"}  # one command, the whole comparison
    assert runner.with_peer_methods(("minmax", "ptq4vit")) == ("minmax", "ptq4vit", "gptq", "mptq", "repq-vit")
    assert "Made by one command" in (tmp_path / "tiny.md").read_text()
    ort = {r["method"]: r for r in rows if r["method"].startswith("ort-")}
    assert set(ort) == {"ort-minmax", "ort-percentile", "ort-entropy"}
    mm = next(r for r in rows if r["method"] == "minmax")
    for r in ort.values():
        assert all(k in r for k in REQUIRED)
        assert r["num_calib"] == 8 and r["num_test"] == 40 and r["w_bits"] == r["a_bits"] == 8
        assert r["top1_float"] == mm["top1_float"]
        assert r["agreement"] > 0.8  # W8A8 of a 1-block model: ORT's int8 keeps almost every prediction


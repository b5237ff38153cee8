"""The README's main command: `vitq quantize` with no arguments runs on the shipped model and data."""

import json

import pytest

from vitq.cli import main
from vitq.models.fmnist_vit import ASSET_DIR


@pytest.mark.skipif(not (ASSET_DIR / "model.safetensors").is_file(), reason="fmnist-vit weights not built")
def test_default_quantize_runs_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the defaults, made cheaper: fewer candidates and test images (the demo uses C=100 and 2,000)
    assert main(["quantize", "--num-candidates", "10", "--max-iters", "2", "--num-test", "300"]) == 0
    summary = json.loads(capsys.readouterr().out.split("wrote report")[0])
    assert summary["model"] == "vitq:fmnist-vit" and summary["num_calib"] == 32 and summary["num_test"] == 300
    assert summary["top1"] >= summary["top1_float"] - 0.03  # W8A8 costs at most a few points
    assert (tmp_path / "runs" / "fmnist-vit-liu2021-w8a8" / "vitq.json").is_file()

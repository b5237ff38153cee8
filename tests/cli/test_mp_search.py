import json

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS, make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

from vitq.cli import main

MODEL_ARGS = TINY_VIT_CLI_ARGS


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({k: v.contiguous() for k, v in make_tiny_vit(num_classes=3).state_dict().items()},
              tmp_path / "w.safetensors")
    (tmp_path / "calib").mkdir()
    for i in range(8):
        arr = (torch.rand(40, 36, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / "calib" / f"{i}.png")
    return tmp_path


def test_mp_search_writes_a_plan_that_quantize_uses(files, capsys):
    plan = files / "plan.json"
    common = [*MODEL_ARGS, "--checkpoint", str(files / "w.safetensors"), "--calib", str(files / "calib"),
              "--num-calib", "8"]
    assert main(["mp-search", *common, "--mp", "nuclear", "--bits", "5", "--out", str(plan),
                 "--plot", str(files / "plan.png")]) == 0
    summary = json.loads(capsys.readouterr().out.split("wrote plan")[0])
    assert summary["size_mb"] <= summary["budget_mb"] and (files / "plan.png").is_file()
    doc = json.loads(plan.read_text())
    assert doc["method"] == "nuclear" and doc["unit_bits"] == summary["unit_bits"]
    out = files / "q"
    assert main(["quantize", *common, "--bits", "5", "--method", "minmax", "--plan", str(plan), "--out", str(out)]) == 0
    meta = json.loads((out / "vitq.json").read_text())
    assert meta["config"]["plan"] == doc["plan"]
    for name, op in meta["ops"].items():
        assert op["a_bits"] == doc["plan"][name]["a_bits"]
        if op["b_is_weight"]:
            assert op["b_bits"] == doc["plan"][name]["w_bits"]


def test_quantize_with_mp_search_reports_the_budget(files, capsys):
    out = files / "q2"
    args = ["quantize", *MODEL_ARGS, "--calib", str(files / "calib"), "--num-calib", "8", "--bits", "4",
            "--method", "minmax", "--mp", "hessian", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.split("wrote report")[0])
    assert summary["mixed_precision"] and summary["mp_method"] == "hessian"
    assert summary["size_mb"] <= summary["budget_mb"]
    assert json.loads((out / "vitq.json").read_text())["config"]["plan"]


@pytest.mark.parametrize("extra,match", [
    (["--mp", "greedy", "--plan", "{files}/x.json"], "not both"),
    (["--budget-mb", "0.05"], "--budget-mb needs --mp"),
    (["--mp", "nuclear", "--budget-mb", "0.001"], "below the smallest model"),
    (["--mp", "nuclear", "--w-bits", "6", "--a-bits", "8"], "differ"),
    (["--plan", "missing.json"], "argument --plan: missing.json does not exist"),
])
def test_bad_mp_flags_exit_2(files, capsys, extra, match):
    (files / "x.json").write_text("{}")
    args = ["quantize", *MODEL_ARGS, "--calib", str(files / "calib"), "--num-calib", "2", "--method", "minmax",
            "--out", str(files / "bad"), *(e.format(files=files) for e in extra)]
    assert main(args) == 2
    assert match in capsys.readouterr().err
    assert not (files / "bad").exists()

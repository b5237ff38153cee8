"""`vitq quantize` writes the run report by default; `vitq report` remakes it and makes bench reports."""

import json

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS, make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

from vitq.cli import main

MODEL_ARGS = TINY_VIT_CLI_ARGS


@pytest.fixture
def run_setup(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = make_tiny_vit(num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()).save(calib / f"{i}.png")
    return tmp_path


def _quantize(setup, out, *extra):
    return main(["quantize", *MODEL_ARGS, "--checkpoint", str(setup / "w.safetensors"), "--calib",
                 str(setup / "calib"), "--num-calib", "4", "--method", "minmax", "--out", str(out), *extra])


def test_quantize_writes_report_and_report_remakes_it(run_setup, capsys):
    out = run_setup / "run"
    assert _quantize(run_setup, out) == 0
    stdout = capsys.readouterr().out
    json.loads(stdout.split("wrote report")[0])  # the summary stays parseable: the report line comes after
    assert f"wrote report {out / 'report.md'}" in stdout
    md = (out / "report.md").read_text()
    assert "`blocks.1.attn.matmul_context`" in md and "Lowest:" in md  # per-op SQNR vs the float checkpoint
    assert (out / "report-layer-sqnr.png").is_file() and (out / "report-intervals.png").is_file()
    (out / "report.md").unlink()
    # remade from the directory: the checkpoint spec rebuilds the float model, the recorded --calib the images
    assert main(["report", str(out), "--num-images", "2"]) == 0
    md = (out / "report.md").read_text()
    assert "on 2 calibration images" in md and "`blocks.1.attn.matmul_context`" in md


def test_no_report_flag(run_setup):
    out = run_setup / "run_plain"
    assert _quantize(run_setup, out, "--no-report") == 0
    assert not (out / "report.md").exists() and (out / "vitq.json").is_file()


def test_report_bench_and_bad_input(tmp_path, capsys):
    results = tmp_path / "toy.json"
    results.write_text(json.dumps({"rows": [{"model": "toy", "method": "minmax", "w_bits": 8, "top1": 0.8}]}))
    assert main(["report", "--bench", str(results), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "toy-report.md").is_file() and (tmp_path / "rep" / "toy-top1-vs-bits.png").is_file()
    assert main(["report"]) == 2 and "give RUN_DIR" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2 and "no vitq.json" in capsys.readouterr().err
    assert main(["report", "--bench", str(tmp_path / "missing.json")]) == 2
    assert "no such results file" in capsys.readouterr().err

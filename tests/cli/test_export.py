"""``vitq quantize --packed``, ``vitq export`` and ``vitq eval --onnx``."""

import json

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS, make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

from vitq.cli import main

pytest.importorskip("onnxruntime")

MODEL_ARGS = TINY_VIT_CLI_ARGS


@pytest.fixture
def setup(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = make_tiny_vit(num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    for split in ("calib", "test"):
        for i in range(12):
            arr = (torch.rand(40, 36, 3, generator=g) * 255).to(torch.uint8).numpy()
            d = tmp_path / split / f"c{i % 3}" if split == "test" else tmp_path / split
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(d / f"{i}.png")
    return tmp_path


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"): out.rindex("}") + 1])


def test_packed_quantize_export_and_onnx_eval(setup, capsys):
    out, onnx_file = setup / "q", setup / "q.onnx"
    common = ["--data", str(setup / "test"), "--batch-size", "5"]
    assert main(["quantize", *MODEL_ARGS, "--checkpoint", str(setup / "w.safetensors"), "--calib",
                 str(setup / "calib"), "--method", "minmax", "--num-calib", "8", "--packed", "--out", str(out)]) == 0
    assert (out / "packed.safetensors").is_file() and not (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["eval", "--quantized", str(out), *common]) == 0
    res_q = _json(capsys)
    assert main(["export", "--quantized", str(out), "--out", str(onnx_file)]) == 0
    assert _json(capsys)["kind"] == "qdq" and onnx_file.is_file()
    assert main(["eval", "--onnx", str(onnx_file), "--ort-threads", "1", *common]) == 0
    res_onnx = _json(capsys)
    assert res_onnx["num_test"] == res_q["num_test"] == 12
    # the float reference comes from the spec recorded in the file (checkpoint included)
    assert res_onnx["top1_float"] == res_q["top1_float"]
    assert res_onnx["top1"] == res_q["top1"] and res_onnx["agreement_with_float"] == res_q["agreement_with_float"]


def test_export_on_the_fly_and_float(setup, capsys):
    args = [*MODEL_ARGS, "--checkpoint", str(setup / "w.safetensors"), "--calib", str(setup / "calib"),
            "--num-calib", "4", "--method", "minmax", "--bits", "6"]
    assert main(["export", *args, "--activation-type", "s8", "--out", str(setup / "q.onnx")]) == 0
    assert _json(capsys)["kind"] == "qdq"
    assert main(["export", *args, "--float", "--out", str(setup / "f.onnx")]) == 0
    assert _json(capsys)["kind"] == "float"
    assert main(["eval", "--onnx", str(setup / "f.onnx"), "--data", str(setup / "test"), "--ort-threads", "1"]) == 0
    res = _json(capsys)
    assert res["kind"] == "float" and res["agreement_with_float"] == 1.0 and res["top1"] == res["top1_float"]


def test_export_errors_exit_2(setup, capsys):
    assert main(["export", "--quantized", str(setup / "nothing"), "--out", str(setup / "x.onnx")]) == 2
    assert "not a saved vitq model" in capsys.readouterr().err
    assert main(["export", *MODEL_ARGS, "--out", str(setup / "x.onnx")]) == 2
    assert "--calib DIR is required" in capsys.readouterr().err
    assert not (setup / "x.onnx").exists()

import json

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS, make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

from vitq.cli import main

MODEL_ARGS = TINY_VIT_CLI_ARGS


@pytest.fixture
def setup(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = make_tiny_vit(num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    calib = tmp_path / "calib"
    calib.mkdir()
    test = tmp_path / "test"
    for i in range(8):
        arr = (torch.rand(40, 36, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(calib / f"{i}.png")
        (test / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).convert("L").save(test / f"c{i % 3}" / f"{i}.png")
    return tmp_path


def test_quantize_then_eval(setup, capsys):
    out = setup / "out"
    rc = main(["quantize", *MODEL_ARGS, "--checkpoint", str(setup / "w.safetensors"), "--calib", str(setup / "calib"),
               "--bits", "6", "--method", "liu2021", "--num-calib", "6", "--num-candidates", "5", "--max-iters", "1",
               "--eval-data", str(setup / "test"), "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split("wrote report")[0])
    assert summary["num_calib"] == 6 and summary["w_bits"] == 6 and 0 <= summary["agreement"] <= 1
    assert (out / "model.safetensors").is_file() and (out / "vitq.json").is_file()
    rc = main(["eval", "--quantized", str(out), "--data", str(setup / "test")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_test"] == 8 and "top1" in res and "agreement_with_float" in res


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--bits", "1"], "argument --bits: 1 bits is out of range: use an integer in 2..16"),
        (["--w-bits", "17"], "argument --w-bits: 17 bits is out of range"),
        (["--calib", "DOES_NOT_EXIST"], "--calib: image folder DOES_NOT_EXIST does not exist"),
        (["--checkpoint", "missing.safetensors"], "argument --checkpoint: missing.safetensors does not exist"),
    ],
)
def test_bad_input_exits_2_with_message_and_writes_nothing(setup, capsys, extra, match):
    out = setup / "out_bad"
    args = ["quantize", *MODEL_ARGS, "--calib", str(setup / "calib"), "--num-calib", "2", "--out", str(out),
            "--method", "minmax", *extra]
    assert main(args) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_config_file_with_flag_overrides(setup, capsys):
    from vitq.config import QuantConfig

    QuantConfig(w_bits=4, a_bits=4, method="minmax", per_channel_weights=True).to_json(setup / "cfg.json")
    out = setup / "out_cfg"
    rc = main(["quantize", *MODEL_ARGS, "--calib", str(setup / "calib"), "--num-calib", "4", "--config",
               str(setup / "cfg.json"), "--a-bits", "6", "--out", str(out)])
    assert rc == 0
    import json as _json

    cfg = _json.loads((out / "vitq.json").read_text())["config"]
    assert (cfg["w_bits"], cfg["a_bits"], cfg["method"], cfg["per_channel_weights"]) == (4, 6, "minmax", True)

import json

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.errors import ConfigError
from vitq.export.serialization import load_quantized, save_quantized
from vitq.mp import MPResult, load_plan, search_plan
from vitq.nn.qops import quant_ops


@pytest.fixture(scope="module")
def result():
    g = torch.Generator().manual_seed(1)
    return search_plan(make_tiny_vit(), torch.randn(8, 3, 32, 32, generator=g), method="nuclear", bits=5)


def test_result_and_plan_round_trip_through_json(result, tmp_path):
    path = result.save(tmp_path / "plan.json")
    assert load_plan(path) == result.plan
    assert list(load_plan(path)) == list(result.plan)  # order kept (first match wins)
    back = MPResult.load(path)
    assert back == result
    cfg = vitq.QuantConfig(w_bits=5, a_bits=5, plan=load_plan(path))
    again = vitq.QuantConfig.from_json(cfg.to_json())
    assert again.plan == result.plan
    assert all(again.bits_for(n) == (b["w_bits"], b["a_bits"]) for n, b in result.plan.items())


def test_user_edited_bare_plan_with_regex(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"blocks.0.attn.qkv": {"w_bits": 8, "a_bits": 8}, "re:blocks\\.1\\..*": {"w_bits": 4}}))
    plan = load_plan(p)
    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(w_bits=6, a_bits=6, plan=plan))
    ops = quant_ops(q)
    assert ops["blocks.0.attn.qkv"].weight_quantizer.bits == 8
    assert ops["blocks.1.mlp.fc1"].weight_quantizer.bits == 4 and ops["blocks.1.mlp.fc1"].input_quantizer.bits == 6
    assert ops["blocks.0.mlp.fc1"].weight_quantizer.bits == 6


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"plan": {"blocks.0.attn.qkv": {"w_bits": 40}}}', "w_bits=40"),
    ('{"re:(": {"w_bits": 4}}', "regular expression"),
])
def test_bad_plan_files_are_config_errors(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_plan(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_plan(tmp_path / "missing.json")


def test_saved_quantized_model_carries_the_plan(result, tmp_path, calib_images, test_images):
    model = make_tiny_vit()
    model.vitq_model_spec = {"spec": "timm:vit_tiny_patch16_224",
                             "kwargs": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                                            num_classes=10)}
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=5, a_bits=5, method="minmax", plan=result.plan))
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    save_quantized(q, tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "vitq.json").read_text())
    assert meta["config"]["plan"] == result.plan
    loaded = load_quantized(tmp_path / "q")
    bits = {n: tuple(x.bits for x in op.quantizers()) for n, op in quant_ops(loaded).items()}
    assert bits == {n: tuple(x.bits for x in op.quantizers()) for n, op in quant_ops(q).items()}
    with torch.no_grad():
        assert torch.equal(loaded(test_images), q(test_images))

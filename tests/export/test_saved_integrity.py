"""Saved models are checked on load: strict vitq.json (no NaN / Infinity written or read), the sha256 of the
tensor file, and each op's saved bits and state against what the saved config (and plan) gives."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

import vitq
from vitq.errors import NonFiniteError, QuantizedModelFormatError
from vitq.export import load_saved, save_packed, save_quantized

PLAN = {"blocks.1.mlp.fc2": {"w_bits": 4, "a_bits": 6}}
SAVERS = [pytest.param((save_quantized, "model.safetensors"), id="plain"),
          pytest.param((save_packed, "packed.safetensors"), id="packed")]


@pytest.fixture(scope="module")
def qmodel():
    from conftest import make_tiny_vit

    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(method="minmax", plan=PLAN))
    vitq.calibrate(q, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), progress=False)
    return vitq.freeze(q)


@pytest.fixture(params=SAVERS)
def saved(request, tmp_path, qmodel):
    save, weights = request.param
    save(qmodel, tmp_path / "q")
    return tmp_path / "q", weights


def _meta(path):
    return json.loads((path / "vitq.json").read_text())


def _write(path, meta):
    (path / "vitq.json").write_text(json.dumps(meta))


# -- strict JSON -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("save", [save_quantized, save_packed])
@pytest.mark.parametrize("extra,key", [({"summary": {"logits_sqnr_db": math.inf}}, "extra.summary.logits_sqnr_db"),
                                       ({"loss": [1.0, math.nan]}, "extra.loss[1]"),
                                       ({"a.b": -math.inf}, "extra['a.b']")])
def test_non_finite_value_is_not_written(tmp_path, qmodel, save, extra, key):
    with pytest.raises(NonFiniteError, match=key.replace("[", r"\[").replace(".", r"\.")):
        save(qmodel, tmp_path / "q", extra=extra)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_constant_in_vitq_json_is_rejected(saved, constant):
    path, _ = saved
    meta = _meta(path)
    meta["extra"] = {"x": "PLACEHOLDER"}
    (path / "vitq.json").write_text(json.dumps(meta).replace('"PLACEHOLDER"', constant))
    with pytest.raises(QuantizedModelFormatError, match="not valid JSON"):
        load_saved(path)


# -- digest ----------------------------------------------------------------------------------------------

def test_digest_is_recorded_and_a_changed_weights_file_is_refused(saved):
    path, weights = saved
    meta = _meta(path)
    assert meta["format_version"] == 3
    data = bytearray((path / weights).read_bytes())
    assert meta["files"][weights] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    load_saved(path)
    data[-3] ^= 0x01  # one bit of the tensor data (the header is at the start)
    (path / weights).write_bytes(bytes(data))
    with pytest.raises(QuantizedModelFormatError, match=f"{weights}.*differs from the digest"):
        load_saved(path)


def test_missing_digest_is_refused_in_format_v3(saved):
    path, weights = saved
    meta = _meta(path)
    del meta["files"]
    _write(path, meta)
    with pytest.raises(QuantizedModelFormatError, match=f"no valid sha256 digest of {weights}"):
        load_saved(path)


def test_format_v2_without_digest_still_loads(saved, qmodel):
    path, _ = saved
    meta = _meta(path)
    del meta["files"]
    meta["format_version"] = 2
    _write(path, meta)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(load_saved(path)(x), qmodel(x))


# -- per-op settings against the config ------------------------------------------------------------------

@pytest.mark.parametrize("op,field,value,match", [
    ("blocks.0.attn.qkv", "b_bits", 4, "op blocks.0.attn.qkv: b_bits=4, but the saved config .* gives this op 8 bits"),
    ("blocks.1.mlp.fc2", "b_bits", 8, "op blocks.1.mlp.fc2: b_bits=8, but .* gives this op 4 bits"),
    ("blocks.0.attn.matmul_scores", "a_bits", 6, "op blocks.0.attn.matmul_scores: a_bits=6"),
    ("blocks.0.mlp.fc1", "a_bits", 99, r"op blocks.0.mlp.fc1: a_bits=99 is not a bit-width"),
    ("blocks.0.mlp.fc1", "a_bits", "8", r"op blocks.0.mlp.fc1: a_bits='8' is not a bit-width"),
    ("blocks.0.attn.proj", "enabled", False, "op blocks.0.attn.proj: enabled=false, but the model is recorded as "
                                             "calibrated"),
    ("blocks.0.attn.proj", "enabled", None, "op blocks.0.attn.proj: enabled=None must be true or false"),
    ("blocks.0.attn.proj", "role", "conv", "op blocks.0.attn.proj: role='conv'"),
])
def test_edited_op_settings_are_refused(saved, op, field, value, match):
    path, _ = saved
    meta = _meta(path)
    meta["ops"][op][field] = value
    _write(path, meta)
    with pytest.raises(QuantizedModelFormatError, match=match):
        load_saved(path)


def test_consistent_settings_load_and_keep_the_plan(saved, qmodel):
    path, _ = saved
    q = load_saved(path)
    fc2 = q.get_submodule("blocks.1.mlp.fc2")
    assert (fc2.input_quantizer.bits, fc2.weight_quantizer.bits) == (6, 4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(q(x), qmodel(x))


def test_calibrated_flag_must_be_boolean(saved):
    path, _ = saved
    meta = _meta(path)
    meta["calibrated"] = "yes"
    _write(path, meta)
    with pytest.raises(QuantizedModelFormatError, match="'calibrated'='yes' must be true or false"):
        load_saved(path)


def test_truncated_weights_file_is_refused(saved):
    path, weights = saved
    data = (path / weights).read_bytes()
    (path / weights).write_bytes(data[:-100])
    with pytest.raises(QuantizedModelFormatError, match=f"{weights}: {len(data) - 100} bytes, but vitq.json records "
                                                        f"{len(data)}"):
        load_saved(path)

import json

import pytest
import torch

import vitq
from vitq.errors import QuantizedModelFormatError
from vitq.export import load_quantized, save_quantized


@pytest.fixture
def saved(tmp_path, tiny_vit, calib_images):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021", w_bits=6, a_bits=6, num_candidates=8, max_iters=2))
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    save_quantized(q, tmp_path / "q")
    return q, tmp_path / "q"


def test_save_load_reproduces_outputs_exactly(saved, calib_images):
    q, path = saved
    loaded = load_quantized(path)  # architecture rebuilt from the recorded timm spec, no pickle
    with torch.no_grad():
        assert torch.equal(loaded(calib_images), q(calib_images))
    assert loaded.vitq_info.config == q.vitq_info.config
    meta = json.loads((path / "vitq.json").read_text())
    assert meta["ops"]["blocks.0.attn.matmul_scores"]["a_bits"] == 6


def test_load_into_given_model(saved, calib_images):
    from conftest import make_tiny_vit

    q, path = saved
    loaded = load_quantized(path, model=make_tiny_vit(seed=5))
    with torch.no_grad():
        assert torch.equal(loaded(calib_images), q(calib_images))


def test_not_a_saved_model(tmp_path):
    with pytest.raises(QuantizedModelFormatError, match="not a saved vitq model"):
        load_quantized(tmp_path)


def test_wrong_format_version(saved):
    _, path = saved
    meta = json.loads((path / "vitq.json").read_text())
    meta["format_version"] = 99
    (path / "vitq.json").write_text(json.dumps(meta))
    with pytest.raises(QuantizedModelFormatError, match="v99"):
        load_quantized(path)


def test_save_is_atomic(tmp_path, tiny_vit, monkeypatch):
    q = vitq.quantize(tiny_vit)
    out = tmp_path / "q"
    import vitq.export.serialization as ser

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ser, "save_model", boom)
    with pytest.raises(OSError):
        save_quantized(q, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []

import pytest
import torch
from safetensors.torch import save_file

from vitq.errors import CheckpointError, ConfigError
from vitq.models.loading import create_model, float_model_from_spec

KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=10)


def test_checkpoint_safetensors_and_torch(tmp_path, tiny_vit):
    sd = tiny_vit.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny_vit(x)
        for f in ("w.safetensors", "w.pth"):
            m = create_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / f, **KW)
            assert torch.equal(m(x), ref)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "none.safetensors", **KW)


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    for f in ("bad.safetensors", "bad.pth"):
        with pytest.raises(CheckpointError, match="corrupt"):
            create_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / f, **KW)


def test_checkpoint_of_another_architecture(tmp_path, tiny_vit):
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="shape mismatches: .*embed_dim|shape mismatches"):
        create_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "w.safetensors", **{**KW, "embed_dim": 64})
    with pytest.raises(CheckpointError, match="missing keys: blocks.2"):
        create_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "w.safetensors", **{**KW, "depth": 3})


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        create_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "evil.pth", **KW)


@pytest.mark.parametrize("spec", ["vit_tiny", "torch:vit", "timm:"])
def test_bad_spec(spec):
    with pytest.raises(ConfigError, match="timm:NAME"):
        create_model(spec)


def test_float_model_from_spec_rebuilds_the_recorded_model(tmp_path, tiny_vit):
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, tmp_path / "w.safetensors")
    spec = {"spec": "timm:vit_tiny_patch16_224", "kwargs": KW, "checkpoint": str(tmp_path / "w.safetensors")}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        m = float_model_from_spec(spec)
        assert torch.equal(m(x), tiny_vit(x)) and not m.training
        assert m.vitq_model_spec == spec  # rebuilding it again gives the same model
        torch.manual_seed(123)
        arch = float_model_from_spec(spec, weights=False)  # architecture only: the checkpoint is not read
        assert not torch.equal(arch(x), tiny_vit(x)) and "checkpoint" not in arch.vitq_model_spec
    assert float_model_from_spec({"spec": "timm:vit_tiny_patch16_224", "kwargs": KW}).vitq_model_spec["kwargs"] == KW


@pytest.mark.parametrize("spec,match", [
    (None, "no model spec"),
    ({}, "no model spec"),
    ("timm:vit_tiny_patch16_224", "malformed"),
    ({"kwargs": {}}, "malformed"),
    ({"spec": "timm:vit_tiny_patch16_224", "kwargs": [1]}, "'kwargs' must be a dict"),
    ({"spec": "timm:vit_tiny_patch16_224", "checkpoint": 3}, "'checkpoint' must be a path"),
    ({"spec": "nope"}, "no source prefix"),
])
def test_float_model_from_spec_rejects_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        float_model_from_spec(spec)


def test_float_model_from_spec_missing_checkpoint(tmp_path):
    spec = {"spec": "timm:vit_tiny_patch16_224", "kwargs": KW, "checkpoint": str(tmp_path / "gone.safetensors")}
    with pytest.raises(CheckpointError, match="does not exist"):
        float_model_from_spec(spec)

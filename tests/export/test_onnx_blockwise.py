"""Why ORT and the simulation drift apart on deep models, and the check that tells drift from a bug.

On a deep quantized ViT, ORT's code mismatches are not an export error but propagation: each block in
ORT computes what the simulation computes from the same input (float ops differ in the last bits, so a
rare activation within an ulp of a rounding tie gets the neighbouring code), and every flipped code
changes later quantizer inputs by a whole step, which flips more codes downstream. On the real DINOv2
ViT-S/14 (W8A8 minmax, 12 blocks) this cascade re-randomizes most codes: 1e-6 relative noise at the
quantizer inputs of the simulation alone flips 70-85% of codes from block 3 on, about as many as ORT
(see ``vitq.export.ort_runtime``). The tests below run a tiny DINOv2-style model (LayerScale, 6 blocks)
through the same mechanism: each block exported alone matches to > 100 dB, the whole model to ~47 dB,
which is within the model's own sensitivity to float noise.
"""

from __future__ import annotations

import pytest
import torch
from helpers_export import _timm, calibrated, images_for, sim_logits

import vitq
from vitq.eval.metrics import logits_of, sqnr_db
from vitq.export.onnx_export import export_onnx
from vitq.export.onnx_qdq import QDQActivation, qdq_twin
from vitq.export.ort_runtime import OrtModel

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

DEPTH = 6


@pytest.fixture(scope="module")
def layerscale_vit():
    """A tiny DINOv2-style timm ViT (LayerScale, 6 blocks), W8A8 minmax, and 64 test images."""
    torch.manual_seed(0)
    model = _timm("vit_small_patch14_dinov2", img_size=28, patch_size=7, embed_dim=48, depth=DEPTH, num_heads=2,
                  init_values=0.5)
    q = calibrated(model, vitq.QuantConfig(method="minmax"), images_for(model, 16, seed=1))
    return q, images_for(model, 64, seed=2)


def test_each_block_alone_matches_simulation(layerscale_vit, tmp_path):
    """Every block exported on its own (LayerScale, LayerNorm eps, attention scale, QDQ fusion) and fed the
    simulation's input gives the simulation's output: bit-close except for tokens hit by a rare tie flip."""
    q, test = layerscale_vit
    io = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: io.__setitem__(k, (i[0], o))) for k, b in enumerate(q.blocks)]
    sim_logits(q, test)
    for h in hooks:
        h.remove()
    for k, block in enumerate(q.blocks):
        x, ref = io[k]
        y = OrtModel(export_onnx(block, tmp_path / f"block{k}.onnx", example=x), threads=1)(x)
        differing = ((y - ref).abs().amax(-1) > 1e-5 * ref.abs().max()).float().mean().item()
        # Measured: SQNR 103..156 dB, tokens differing 0..0.46% (a single tie flip spreads over a token row).
        print(f"block {k}: SQNR {sqnr_db(ref, y):.1f} dB, tokens differing {100 * differing:.2f}%")
        assert sqnr_db(ref, y) >= 80.0 and differing <= 0.02


def test_whole_model_difference_is_within_float_noise_floor(layerscale_vit, tmp_path):
    """ORT vs simulation on the whole model is no larger than the simulation vs itself with 1e-6 relative
    noise at every quantizer input: the drift is the model's sensitivity, not a systematic export error
    (a wrong eps, scale or LayerScale would exceed it by orders of magnitude)."""
    q, test = layerscale_vit
    sim = sim_logits(q, test)
    y = OrtModel(export_onnx(q, tmp_path / "q.onnx"), threads=1).predict(test, batch_size=64)
    twin = qdq_twin(q, "s8")
    g = torch.Generator().manual_seed(1)
    for m in twin.modules():
        if isinstance(m, QDQActivation):
            m.register_forward_pre_hook(lambda mod, i: (i[0] * (1 + 1e-6 * torch.randn(i[0].shape, generator=g)),))
    with torch.no_grad():
        noisy = logits_of(twin(test)).float()

    def rel(a: torch.Tensor) -> float:
        return ((a - sim).norm() / sim.norm()).item()

    # Measured: rel ORT 0.0045 (47 dB, while every block alone is > 100 dB), rel noisy 0.0080.
    print(f"rel |ORT - sim| {rel(y):.2g}, rel |noisy sim - sim| {rel(noisy):.2g}")
    assert 0.0 < rel(noisy) < 0.05
    assert rel(y) <= 2.0 * rel(noisy)
    assert (y.argmax(-1) == sim.argmax(-1)).float().mean() >= 0.95

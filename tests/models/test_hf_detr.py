"""HF DETR: every transformer Linear and attention product (self and cross) quantized, the input projection too;
backbone and heads float by default; exact when disabled (with and without a padding mask); calibrates."""

from __future__ import annotations

import pytest
import torch
from helpers_families import MAX_DISABLED_DIFF, sqnr_db

import vitq
from vitq.errors import CalibrationDataError, UnsupportedModelError
from vitq.models.base import get_adapter
from vitq.nn.qops import QuantConv2d, QuantLinear, QuantMatMul, quant_ops

transformers = pytest.importorskip("transformers")
from transformers import DetrConfig, DetrForObjectDetection  # noqa: E402

from vitq.models.detr_synth import build_detr_synth  # noqa: E402
from vitq.models.hf_detr import QuantDetrCrossAttention, QuantDetrSelfAttention, pack_pixel_mask  # noqa: E402

ENC, DEC = 2, 2
TINY = dict(in_chans=1, widths=[8, 16, 16], depth=1, d_model=32, encoder_layers=ENC, decoder_layers=DEC, heads=4,
            ffn_dim=64, num_queries=5, num_labels=3)


def tiny_detr(seed: int = 0):
    torch.manual_seed(seed)
    model = build_detr_synth(TINY).eval()
    with torch.no_grad():  # larger class logits, so that abs-diff checks mean something
        model.class_labels_classifier.weight.normal_(0.0, 0.5)
    return model


def stock_detr(seed: int = 0):
    """HF's own DETR with a random timm ResNet-18 backbone (frozen BatchNorm), as a COCO user would load one."""
    torch.manual_seed(seed)
    cfg = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=32,
                     encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=4, num_labels=2)
    return DetrForObjectDetection(cfg).eval()


def images(n=6, size=64, channels=1, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def expected_ops(enc: int, dec: int, prefix: str = "model.") -> set[str]:
    names = {f"{prefix}input_projection"}
    attn = ("q_proj", "k_proj", "v_proj", "o_proj", "matmul_scores", "matmul_context")
    for i in range(enc):
        names |= {f"{prefix}encoder.layers.{i}.self_attn.{a}" for a in attn}
        names |= {f"{prefix}encoder.layers.{i}.mlp.{f}" for f in ("fc1", "fc2")}
    for i in range(dec):
        for mod in ("self_attn", "encoder_attn"):
            names |= {f"{prefix}decoder.layers.{i}.{mod}.{a}" for a in attn}
        names |= {f"{prefix}decoder.layers.{i}.mlp.{f}" for f in ("fc1", "fc2")}
    return names


@torch.no_grad()
def outputs(model, x, forward=None):
    out = forward(model, x) if forward else model(pixel_values=x)
    return torch.cat([out.logits.flatten(1), out.pred_boxes.flatten(1)], 1)


@pytest.mark.parametrize("build, enc, dec", [(tiny_detr, ENC, DEC), (stock_detr, 1, 1)], ids=["synth-backbone", "hf-resnet18"])
def test_every_transformer_op_quantized_backbone_and_heads_float(build, enc, dec):
    q = vitq.quantize(build(), vitq.QuantConfig(method="minmax"))
    assert get_adapter(build()).name == "hf-detr"
    ops = quant_ops(q)
    assert set(ops) == expected_ops(enc, dec)
    roles = [op.role for op in ops.values()]
    n_attn = enc + 2 * dec  # self-attention in every layer, cross-attention in every decoder layer
    assert roles.count("attn_scores") == roles.count("attn_context") == n_attn
    assert roles.count("linear") == 4 * n_attn + 2 * (enc + dec) and roles.count("conv") == 1
    attn = [m for m in q.modules() if isinstance(m, (QuantDetrSelfAttention, QuantDetrCrossAttention))]
    assert sum(isinstance(m, QuantDetrCrossAttention) for m in attn) == dec and len(attn) == n_attn
    assert not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in q.model.backbone.modules())
    assert not any(isinstance(m, QuantLinear) for m in q.bbox_predictor.modules())
    assert not isinstance(q.class_labels_classifier, QuantLinear)


def test_quantize_backbone_and_head_options():
    model = tiny_detr()
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.model.backbone.modules())
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax", quantize_backbone=True, quantize_head=True))
    ops = quant_ops(q)
    backbone_ops = [n for n in ops if n.startswith("model.backbone.")]
    assert len(backbone_ops) == n_convs and all(isinstance(ops[n], QuantConv2d) for n in backbone_ops)
    heads = {"class_labels_classifier", *(f"bbox_predictor.layers.{i}" for i in range(3))}
    assert heads <= set(ops)
    assert set(ops) == expected_ops(ENC, DEC) | set(backbone_ops) | heads
    x = images()
    vitq.calibrate(q, x, progress=False)
    assert all(op.quant_enabled for op in ops.values())


@pytest.mark.parametrize("build, channels", [(tiny_detr, 1), (stock_detr, 3)], ids=["synth-backbone", "hf-resnet18"])
def test_disabled_equals_float(build, channels):
    model = build()
    x = images(channels=channels)
    ref = outputs(model, x)
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax"))
    with vitq.quantization_disabled(q):
        assert (outputs(q, x) - ref).abs().max().item() <= MAX_DISABLED_DIFF


def test_pixel_mask_channel():
    """A padded batch carries its mask as an extra channel; the adapter's forward hands it to DETR."""
    model = tiny_detr()
    x = images(4)
    mask = torch.ones(4, 64, 64, dtype=torch.long)
    mask[1, :, 40:] = 0
    mask[2, 48:, :] = 0
    x[mask[:, None].expand_as(x) == 0] = 0.0
    ref = outputs(model, x, lambda m, b: m(pixel_values=b, pixel_mask=mask))
    unmasked = outputs(model, x)
    assert (ref - unmasked).abs().max() > 1e-3  # the mask matters
    packed = pack_pixel_mask(x, mask)
    adapter = get_adapter(model)
    assert (outputs(model, packed, adapter.forward) - ref).abs().max() == 0
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax"))
    with vitq.quantization_disabled(q):
        assert (outputs(q, packed, q.vitq_info.forward) - ref).abs().max().item() <= MAX_DISABLED_DIFF
    vitq.calibrate(q, packed, progress=False)  # calibration runs with the mask too
    assert sqnr_db(ref, outputs(q, packed, q.vitq_info.forward)) > 20.0
    with pytest.raises(CalibrationDataError, match="channel"):
        adapter.forward(model, torch.zeros(1, 5, 64, 64))
    with pytest.raises(CalibrationDataError, match="does not match"):
        pack_pixel_mask(x, mask[:, :32])


@pytest.mark.parametrize("method", ["minmax", "percentile", "easyquant", "liu2021"])
def test_calibrates_w8a8(method):
    model = tiny_detr()
    calib, test = images(8, seed=1), images(4, seed=2)
    ref = outputs(model, test)
    q = vitq.quantize(model, vitq.QuantConfig(method=method, num_candidates=20, max_iters=2))
    rep = vitq.calibrate(q, calib, progress=False)
    assert all(op.quant_enabled for op in quant_ops(q).values())
    roles = {r.role for r in rep.ops}
    assert {"attn_scores", "attn_context", "linear", "conv"} <= roles
    assert sqnr_db(ref, outputs(q, test)) > 20.0


def _padded_images(n: int, seed: int):
    x = images(n, seed=seed)
    mask = torch.ones(n, 64, 64, dtype=torch.long)
    mask[::3, :, 40:] = 0  # some padded images: the layers get per-image attention masks
    x[mask[:, None].expand_as(x) == 0] = 0.0
    return pack_pixel_mask(x, mask)


def test_reconstruction_rows_give_each_detr_layer_its_own_images_keyword_inputs():
    """DETR's layers take position embeddings, attention masks and (decoder) the encoder's output besides
    their input: any rows of the calibration images, drawn across batches, run as in the model."""
    from vitq.calibration.capture import capture_unit_inputs, run_unit
    from vitq.calibration.reconstruction import UnitRows, _tensor_out

    model = tiny_detr()
    adapter = get_adapter(model)
    batches = [_padded_images(5, 1), _padded_images(4, 2)]
    for name in [f"model.encoder.layers.{ENC - 1}", f"model.decoder.layers.{DEC - 1}"]:
        unit = model.get_submodule(name)
        inputs = capture_unit_inputs(model, unit, batches, adapter.forward)
        assert any(isinstance(v, torch.Tensor) for a, k in inputs for v in (*a[1:], *k.values()))
        with torch.no_grad():
            want = torch.cat([_tensor_out(o) for o in run_unit(unit, inputs)])
            rows = UnitRows(inputs, name)
            idx = torch.tensor([8, 0, 3, 5, 5])
            assert torch.allclose(_tensor_out(rows(unit, idx)), want[idx], atol=1e-5)


def test_block_reconstruction_runs_on_detr_layers():
    model = tiny_detr()
    calib = [_padded_images(8, 1), _padded_images(8, 2)]
    q = vitq.quantize(model, vitq.QuantConfig(method="liu2021-pc-recon", w_bits=4, a_bits=4, num_candidates=10,
                                              max_iters=1, recon_iters=60))
    rep = vitq.calibrate(q, calib, progress=False)
    units = {u["unit"]: u for u in rep.units}
    layers = [f"model.{part}.layers.{i}" for part, n in (("encoder", ENC), ("decoder", DEC)) for i in range(n)]
    assert set(layers) <= set(units) and all(units[n]["iters"] == 60 for n in layers)
    # never worse than the search on the calibration images; at least one layer better
    assert all(u["loss_after"] <= u["loss_before"] for u in units.values())
    assert any(units[n]["loss_after"] < units[n]["loss_before"] for n in layers)


def test_cross_attention_scores_get_the_ranking_loss():
    """Liu et al.'s ranking loss applies to every Q·K^T, the decoder's cross-attention maps included."""
    q = vitq.quantize(tiny_detr(), vitq.QuantConfig(method="liu2021", num_candidates=10, max_iters=1))
    rep = vitq.calibrate(q, images(4), progress=False)
    cross = [r for r in rep.ops if r.name.endswith("encoder_attn.matmul_scores")]
    assert len(cross) == DEC
    ops = quant_ops(q)
    assert all(isinstance(ops[r.name], QuantMatMul) and ops[r.name].role == "attn_scores" for r in cross)


def test_non_detr_detector_is_rejected():
    class Detector(torch.nn.Module):  # some other detector: no adapter
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(UnsupportedModelError, match="hf-detr"):
        vitq.quantize(Detector(), vitq.QuantConfig())


def test_hf_folder_loads_as_a_detector(tmp_path):
    from vitq.models.loading import create_model

    model = stock_detr()
    model.save_pretrained(tmp_path)
    loaded = create_model(f"hf:{tmp_path}")
    assert isinstance(loaded, DetrForObjectDetection) and get_adapter(loaded).name == "hf-detr"
    x = images(channels=3, n=2)
    assert (outputs(loaded, x) - outputs(model, x)).abs().max() == 0


def test_mptq_parts_do_not_fit_detr_and_say_why():
    """OPT-m needs post-GELU inputs (DETR's FFN uses ReLU): refused at quantize. SQ-b needs LayerNorms that feed
    only Linears (DETR's post-norm LayerNorms feed the residual too): refused at calibration, float unchanged."""
    model = tiny_detr()
    with pytest.raises(UnsupportedModelError, match="'mptq'.*GELU.*DetrForObjectDetection"):
        vitq.quantize(model, vitq.QuantConfig(method="mptq", w_bits=8, a_bits=8))
    q = vitq.quantize(model, vitq.QuantConfig(method="mptq-sqb", w_bits=8, a_bits=8))
    with pytest.raises(UnsupportedModelError, match="sqb folding.*DetrEncoderLayer.*post-norm"):
        vitq.calibrate(q, torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)), progress=False)

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.errors import CalibrationDataError, NonFiniteError, VitqError
from vitq.eval.metrics import sqnr_db
from vitq.nn.qops import quant_ops

FAST = dict(num_candidates=25, max_iters=3)


def _quantized_logits(model, calib, test, **cfg):
    q = vitq.quantize(model, vitq.QuantConfig(**cfg))
    vitq.calibrate(q, calib, progress=False)
    with torch.no_grad():
        return q(test)


def test_liu_w8a8_sqnr_on_tiny_vit(tiny_vit, calib_images, test_images):
    """W8A8 with the full Liu method: logits SQNR >= 30 dB against float (measured 32.3 dB)."""
    with torch.no_grad():
        ref = tiny_vit(test_images)
    out = _quantized_logits(tiny_vit, calib_images, test_images, method="liu2021", **FAST)
    assert sqnr_db(ref, out) >= 30.0


@pytest.mark.parametrize("search", ["reference", "fast"])
@pytest.mark.parametrize("bits", [8, 6, 4], ids=lambda b: f"W{b}A{b}")
def test_liu_never_worse_than_minmax(tiny_vit, calib_images, test_images, bits, search):
    """Measured logits SQNR, Liu (reference / fast) vs MinMax: W8A8 32.3 / 32.3 vs 31.6 dB,
    W6A6 21.8 / 21.8 vs 20.3 dB, W4A4 9.1 / 9.9 vs 5.9 dB."""
    with torch.no_grad():
        ref = tiny_vit(test_images)
    liu = sqnr_db(ref, _quantized_logits(tiny_vit, calib_images, test_images, method="liu2021", w_bits=bits,
                                         a_bits=bits, search=search, **FAST))
    mm = sqnr_db(ref, _quantized_logits(tiny_vit, calib_images, test_images, method="minmax", w_bits=bits,
                                        a_bits=bits))
    assert liu >= mm


def test_calibration_is_reproducible(tiny_vit, calib_images):
    outs = []
    for _ in range(2):
        q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021", num_candidates=10, max_iters=2, seed=3))
        rep = vitq.calibrate(q, calib_images, progress=False)
        outs.append([o.scales for o in rep.ops])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("method", ["minmax", "percentile", "easyquant", "mse", "liu2021-sim", "liu2021-sim+rank",
                                    "liu2021-sim+bc", "liu2021"])
def test_every_method_calibrates_every_op(tiny_vit, calib_images, method):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method=method, num_candidates=5, max_iters=1))
    rep = vitq.calibrate(q, calib_images, progress=False)
    assert len(rep.ops) == sum(vitq.count_quant_ops(q).values())
    assert all(op.quant_enabled for op in quant_ops(q).values())


def test_percentile_clips_below_max(tiny_vit, calib_images):
    q_mm = vitq.quantize(tiny_vit, vitq.QuantConfig(method="minmax"))
    q_pc = vitq.quantize(tiny_vit, vitq.QuantConfig(method="percentile", percentile=99.0))
    vitq.calibrate(q_mm, calib_images, progress=False)
    vitq.calibrate(q_pc, calib_images, progress=False)
    assert q_pc.blocks[0].mlp.fc2.input_quantizer.scale < q_mm.blocks[0].mlp.fc2.input_quantizer.scale


def test_nan_in_calibration_images_is_reported(tiny_vit, calib_images):
    bad = calib_images.clone()
    bad[3, 0, 0, 0] = float("nan")
    q = vitq.quantize(tiny_vit)
    with pytest.raises(NonFiniteError, match="calibration batch"):
        vitq.calibrate(q, bad, progress=False)


def test_inf_inside_the_network_names_the_op(calib_images):
    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(method="minmax"))  # refuses a float model with inf
    with torch.no_grad():
        q.blocks[1].mlp.fc1.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"blocks\.1\.mlp\.fc\d"):
        vitq.calibrate(q, calib_images, progress=False)


def test_empty_or_malformed_calibration_data(tiny_vit):
    q = vitq.quantize(tiny_vit)
    with pytest.raises(CalibrationDataError, match="empty"):
        vitq.calibrate(q, torch.empty(0, 3, 32, 32), progress=False)
    with pytest.raises(CalibrationDataError, match=r"\(N, C, H, W\)"):
        vitq.calibrate(q, torch.randn(3, 32, 32), progress=False)


def test_calibrate_needs_a_quantized_model(tiny_vit, calib_images):
    with pytest.raises(VitqError, match="vitq.quantize"):
        vitq.calibrate(tiny_vit, calib_images)


def test_freeze_bakes_weights_without_changing_outputs(tiny_vit, calib_images):
    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="minmax", w_bits=4))
    vitq.calibrate(q, calib_images, progress=False)
    with torch.no_grad():
        before = q(calib_images)
        vitq.freeze(q)
        after = q(calib_images)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    w = q.blocks[0].attn.qkv.weight
    assert len(torch.unique(w)) <= 16


def test_on_op_data_sees_each_op_once_before_its_search(tiny_vit, calib_images):
    seen = []

    def hook(name, op, data):
        assert not any(qz.enabled for qz in op.quantizers())  # its search has not run yet
        assert data.a.shape[0] == calib_images.shape[0] and torch.isfinite(data.target).all()
        seen.append(name)

    q = vitq.quantize(tiny_vit, vitq.QuantConfig(method="liu2021", w_bits=8, a_bits=8, num_candidates=10))
    rep = vitq.calibrate(q, calib_images, progress=False, on_op_data=hook)
    assert seen == [o.name for o in rep.ops]

"""vitq.pipeline runs the stages in order and equals quantize + calibrate + freeze."""

import torch

import vitq
from vitq.lifecycle.stages import STAGES


def test_stage_names_in_order():
    assert [s.name for s in STAGES] == ["rotate", "swap", "quantizers", "calibrate", "freeze"]


def test_pipeline_equals_the_lifecycle(tiny_vit, calib_images, test_images):
    cfg = vitq.QuantConfig(method="mptq", w_bits=6, a_bits=6, num_candidates=6, max_iters=2)
    res = vitq.pipeline(tiny_vit, cfg, calib_images, progress=False)
    q = vitq.quantize(tiny_vit, cfg)
    vitq.calibrate(q, calib_images, progress=False)
    vitq.freeze(q)
    with torch.no_grad():
        assert torch.equal(res.model(test_images), q(test_images))
    assert res.info.frozen and res.info.calibrated and len(res.report.ops) == sum(vitq.count_quant_ops(q).values())

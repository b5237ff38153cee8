"""Calibration checkpoints: an interrupted calibration resumes at its last finished unit and ends with
exactly the model an uninterrupted run gives; a checkpoint of another config / images is ignored."""

import json
import logging

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.calibration.capture import capture_unit_inputs, run_unit
from vitq.calibration.checkpoint import (
    META_FILE,
    CalibrationCheckpoint,
    checkpoint_path_for,
    module_attrs,
)
from vitq.info import get_quant_info
from vitq.nn.qops import quant_ops
from vitq.utils.atomic import remove_stale_temps

# 3 blocks: units patch_embed, blocks.0, blocks.1, blocks.2, head (float: nothing to calibrate)
FAST = dict(num_candidates=12, max_iters=2)


class Interrupt(Exception):
    pass


def _interrupt_at(unit: str):
    """An ``on_op_data`` hook that raises at the first op of ``unit`` (so the units before it are done)."""
    def hook(name, _op, _data):
        if name.startswith(unit + "."):
            raise Interrupt(name)
    return hook


def _run(model, images, cfg, **kw):
    q = vitq.quantize(model, cfg)
    rep = vitq.calibrate(q, images, progress=False, **kw)
    return q, rep


def _assert_same(qa, ra, qb, rb):
    sa, sb = qa.state_dict(), qb.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert module_attrs(quant_ops(qa)) == module_attrs(quant_ops(qb))
    da, db = ra.to_dict(), rb.to_dict()
    da.pop("seconds"), db.pop("seconds")
    assert da == db


@pytest.fixture
def images():
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method,unit", [("liu2021", "blocks.1"), ("liu2021", "blocks.0"), ("mptq", "blocks.2"),
                                         ("ptq4vit", "blocks.1"), ("repq-vit", "blocks.2")])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, images, caplog, method, unit):
    model = make_tiny_vit(depth=3)
    cfg = vitq.QuantConfig(method=method, batch_size=5, **FAST)  # 3 batches: 5 + 5 + 2 images
    q_ref, rep_ref = _run(model, images, cfg)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _run(model, images, cfg, checkpoint=ckpt, on_op_data=_interrupt_at(unit))
    meta = json.loads((ckpt / META_FILE).read_text())
    done = meta["units"].index(unit)
    assert meta["units_done"] == done
    with caplog.at_level(logging.INFO, logger="vitq"):
        q_res, rep_res = _run(model, images, cfg, checkpoint=ckpt)
    assert f"resuming calibration: {done} of {len(meta['units'])} units done (from {ckpt})" in caplog.text
    _assert_same(q_ref, rep_ref, q_res, rep_res)
    assert not ckpt.exists()  # removed after success
    assert get_quant_info(q_res).calibrated


def test_resume_twice_and_keep(tmp_path, images, caplog):
    """Interrupted twice, then resumed; ``keep`` leaves the final checkpoint, which a rerun loads whole."""
    model = make_tiny_vit(depth=3)
    cfg = vitq.QuantConfig(method="liu2021", **FAST)
    q_ref, rep_ref = _run(model, images, cfg)
    ckpt = CalibrationCheckpoint(tmp_path / "c", keep=True)
    for unit in ("blocks.0", "blocks.2"):
        with pytest.raises(Interrupt):
            _run(model, images, cfg, checkpoint=ckpt, on_op_data=_interrupt_at(unit))
    q1, rep1 = _run(model, images, cfg, checkpoint=ckpt)
    _assert_same(q_ref, rep_ref, q1, rep1)
    assert ckpt.exists()
    with caplog.at_level(logging.INFO, logger="vitq"):
        q2, rep2 = _run(model, images, cfg, checkpoint=ckpt)
    assert "resuming calibration: 5 of 5 units done" in caplog.text
    _assert_same(q_ref, rep_ref, q2, rep2)
    ckpt.remove()
    assert not ckpt.path.exists()


def _interrupted_at_block1(tmp_path, images):
    """A liu2021 calibration of a 3-block tiny ViT stopped at blocks.1; its model, config and checkpoint dir."""
    model = make_tiny_vit(depth=3)
    cfg = vitq.QuantConfig(method="liu2021", **FAST)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        _run(model, images, cfg, checkpoint=ckpt, on_op_data=_interrupt_at("blocks.1"))
    return model, cfg, ckpt


@pytest.mark.parametrize("change,reason", [
    ("config", "the config differs"),
    ("images", "the calibration images differ"),
    ("model", "the model differs"),
])
def test_other_run_starts_over(tmp_path, images, caplog, change, reason):
    model, cfg, ckpt = _interrupted_at_block1(tmp_path, images)
    if change == "config":
        cfg = vitq.QuantConfig(method="liu2021", num_candidates=13, max_iters=2)
    elif change == "images":
        images = images.clone()
        images[3, 0, 0, 0] += 1e-3
    else:
        model = make_tiny_vit(seed=1, depth=3)
    q_ref, rep_ref = _run(model, images, cfg)
    with caplog.at_level(logging.INFO, logger="vitq"):
        q, rep = _run(model, images, cfg, checkpoint=ckpt)
    assert f"calibration checkpoint ignored: {reason}" in caplog.text
    assert "resuming" not in caplog.text
    _assert_same(q_ref, rep_ref, q, rep)


def test_no_resume_ignores_the_checkpoint(tmp_path, images, caplog):
    model, cfg, ckpt = _interrupted_at_block1(tmp_path, images)
    seen = []
    with caplog.at_level(logging.INFO, logger="vitq"):
        _run(model, images, cfg, checkpoint=CalibrationCheckpoint(ckpt, resume=False),
             on_op_data=lambda n, *_: seen.append(n))
    assert "calibration checkpoint ignored: resuming is off" in caplog.text
    assert seen[0].startswith("patch_embed")  # started over


def test_unreadable_checkpoint_is_ignored(tmp_path, images, caplog):
    model, cfg, ckpt = _interrupted_at_block1(tmp_path, images)
    with open(ckpt / "tensors.safetensors", "r+b") as f:  # corrupt one byte
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    q_ref, rep_ref = _run(model, images, cfg)
    with caplog.at_level(logging.INFO, logger="vitq"):
        q, rep = _run(model, images, cfg, checkpoint=ckpt)
    assert "calibration checkpoint ignored: unreadable" in caplog.text
    _assert_same(q_ref, rep_ref, q, rep)


def test_recaptured_inputs_equal_chained_inputs(images):
    """The stored next-unit inputs are the chained ones; capturing them from the model with the finished
    units quantized gives the same bits too (so either way of resuming is exact)."""
    model = make_tiny_vit(depth=3)
    q = vitq.quantize(model, vitq.QuantConfig(method="liu2021", batch_size=5, **FAST))
    vitq.calibrate(q, images, progress=False)
    info = get_quant_info(q)
    batches = list(images.split(5))
    with torch.no_grad():
        chained = capture_unit_inputs(q, q.blocks[0], batches, info.forward)
        for i in range(2):
            chained = [((o,), {}) for o in run_unit(q.blocks[i], chained)]
            captured = capture_unit_inputs(q, q.blocks[i + 1], batches, info.forward)
            for (a, _), (b, _) in zip(chained, captured):
                assert torch.equal(a[0], b[0])


def test_checkpoint_name_is_not_a_stale_temp(tmp_path):
    out = tmp_path / "run"
    ck = checkpoint_path_for(out)
    assert ck == tmp_path / ".run.resume"
    ck.mkdir()
    (ck / META_FILE).write_text("{}")
    assert remove_stale_temps(out) == [] and ck.exists()


def test_pipeline_takes_a_checkpoint(tmp_path, images, caplog):
    model = make_tiny_vit(depth=3)
    cfg = vitq.QuantConfig(method="liu2021", **FAST)
    ref = vitq.pipeline(model, cfg, images, progress=False)
    with pytest.raises(Interrupt):
        _run(model, images, cfg, checkpoint=tmp_path / "c", on_op_data=_interrupt_at("blocks.2"))
    with caplog.at_level(logging.INFO, logger="vitq"):
        res = vitq.pipeline(model, cfg, images, progress=False, checkpoint=tmp_path / "c")
    assert "resuming calibration: 3 of 5 units done" in caplog.text
    _assert_same(ref.model, ref.report, res.model, res.report)

"""benchmarks/calibration_speed.py --same-inputs: both searches on each op's own data."""

import importlib.util
from pathlib import Path

import torch

import vitq

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("calibration_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_same_inputs_compares_both_searches_on_every_op(tiny_vit, calib_images):
    cs = _load()
    cfg = vitq.QuantConfig(method="liu2021", w_bits=8, a_bits=8, num_candidates=20)
    q = vitq.quantize(tiny_vit, cfg)
    same = cs.SameInputs(cfg)
    rep = vitq.calibrate(q, calib_images, progress=False, on_op_data=same)
    assert [o["name"] for o in same.ops] == [o.name for o in rep.ops]
    fields = cs.same_inputs_fields(same.ops)
    assert fields["same_inputs_num_ops"] == len(rep.ops)
    assert 0 <= fields["same_inputs_ops_with_other_interval"] <= len(rep.ops)
    assert fields["same_inputs_max_objective_diff"] <= 1e-3
    # The engine's own fast search on the same data picks what the callback's fast search picked.
    # Not on Q·K^T: the callback draws its ranking pairs from a fresh generator (the same for both of
    # its searches), the engine from its running one.
    for o, r in zip(same.ops, rep.ops):
        if r.role != "attn_scores":
            assert o["fast"]["scales"] == [list(r.scales[0]), list(r.scales[1])], o["name"]
        assert torch.isfinite(torch.tensor(o["reference"]["loss_end"]))

"""benchmarks/lowbit.py: the float64 simulation that gives the export row its agreement noise floor."""

import importlib.util
import sys
from pathlib import Path

import torch
from conftest import make_tiny_vit, quantize_calibrated

import vitq

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCH))  # lowbit imports its sibling export_speed lazily
    spec = importlib.util.spec_from_file_location("lowbit", BENCH / "lowbit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_float64_simulation_has_the_same_codes_and_leaves_the_model_float32(calib_images, test_images):
    lowbit = _load()
    q, _ = quantize_calibrated(make_tiny_vit(), calib_images, "liu2021-pc-recon-log2", w_bits=4, a_bits=4,
                               recon_iters=0, num_candidates=20, max_iters=2)
    vitq.freeze(q)
    with torch.no_grad():
        ref = q(test_images)
    got = lowbit.float64_logits(q, test_images)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # the same quantized network in other float rounding: equal logits but for the odd flipped code
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.99
    assert all(p.dtype == torch.float32 for p in q.parameters())
    assert all(b.dtype == torch.float32 for b in q.buffers() if b.is_floating_point())

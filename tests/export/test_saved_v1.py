"""Models saved by vitq 0.1.0 before the redesign (format v1, config v1) still load and compute the same."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitq.export import load_quantized

FIXTURES = Path(__file__).parent.parent / "fixtures" / "saved_v1"


@pytest.mark.parametrize("name", ["liu2021-w6a6-plan", "mptq-w4a4"])
def test_v1_saved_model_loads_bit_exactly(name):
    expected = load_file(str(FIXTURES / "expected_logits.safetensors"))
    q = load_quantized(FIXTURES / name)
    with torch.no_grad():
        assert torch.equal(q(expected["inputs"]), expected[name])
    assert q.vitq_info.config.version == 2 and q.vitq_info.frozen


def test_v1_plan_bits_survive():
    q = load_quantized(FIXTURES / "liu2021-w6a6-plan")
    assert q.vitq_info.config.bits_for("blocks.0.attn.qkv") == (8, 8)
    assert q.vitq_info.config.bits_for("blocks.1.mlp.fc2") == (4, 6)

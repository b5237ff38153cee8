import random

import pytest
from conftest import make_tiny_vit

import vitq
from vitq.errors import ConfigError
from vitq.eval.size import model_size_bytes, model_size_mb
from vitq.mp.size import budget_bits, build_size_model
from vitq.mp.units import find_units


@pytest.fixture
def qtiny():
    return vitq.quantize(make_tiny_vit(), vitq.QuantConfig())


def test_module_units_follow_the_paper(qtiny, calib_images):
    units, fixed = find_units(qtiny, calib_images[:1])
    assert [u.name for u in units] == ["blocks.0.msa", "blocks.0.mlp", "blocks.1.msa", "blocks.1.mlp"]
    msa, mlp = units[0], units[1]
    assert msa.ops == ("blocks.0.attn.qkv", "blocks.0.attn.matmul_scores", "blocks.0.attn.matmul_context",
                       "blocks.0.attn.proj")  # call order
    assert msa.feature_op == "blocks.0.attn.matmul_context" and msa.uses_attention_map
    assert mlp.ops == ("blocks.0.mlp.fc1", "blocks.0.mlp.fc2") and mlp.feature_op == "blocks.0.mlp.fc2"
    assert msa.weight_numel == 4 * 48 * 48 and mlp.weight_numel == 8 * 48 * 48
    assert fixed == ["patch_embed.proj"]  # the head stays float (quantize_head=False)


def test_op_granularity_and_other_units(qtiny, calib_images):
    units, fixed = find_units(qtiny, calib_images[:1], granularity="op", include_other=True)
    assert len(units) == 1 + 2 * 6 and fixed == []
    assert units[0].name == "patch_embed.proj" and units[0].kind == "other"
    assert {u.weight_numel for u in units if "matmul" in u.name} == {0}
    with pytest.raises(ConfigError, match="granularity"):
        find_units(qtiny, calib_images[:1], granularity="layer")


def test_size_model_is_exact_and_agrees_with_model_size(qtiny, calib_images):
    for gran in ("module", "op"):
        units, fixed = find_units(qtiny, calib_images[:1], granularity=gran)
        size = build_size_model(qtiny, units, base_bits=6)
        rng = random.Random(0)
        for _ in range(5):
            bits = [rng.randint(3, 10) for _ in units]
            per_op = {n: b for u, b in zip(units, bits) for n in u.ops} | {n: 6 for n in fixed}
            assert size.bits(bits) == 8 * model_size_bytes(qtiny, per_op)
        for b in (4, 6, 8):
            assert budget_bits(size, bits=b) / 8e6 == pytest.approx(
                model_size_mb(vitq.quantize(make_tiny_vit(), vitq.QuantConfig(w_bits=b, a_bits=b))), abs=1e-12)
    assert budget_bits(size, budget_mb=0.25) == 2_000_000
    with pytest.raises(ConfigError, match="budget_mb"):
        budget_bits(size, budget_mb=-1.0)

import pytest
import torch
from conftest import make_tiny_vit

from vitq.mp.nuclear import nuclear_norm, nuclear_sensitivity
from vitq.mp.probe import QuantProbe
from vitq.mp.units import find_units


@pytest.mark.parametrize("shape", [(7, 7), (5, 12), (40, 9), (3, 4, 17, 17), (6, 50, 96)],
                         ids=["square", "wide", "tall", "batched-attn", "batched-features"])
def test_gram_nuclear_norm_equals_svd(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    ref = torch.linalg.matrix_norm(x.double(), ord="nuc")
    got = nuclear_norm(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-4, atol=0)


def test_gram_nuclear_norm_on_rank_deficient_and_softmax_maps():
    g = torch.Generator().manual_seed(1)
    low_rank = torch.randn(8, 30, 3, generator=g) @ torch.randn(8, 3, 20, generator=g)  # rank 3
    attn = torch.randn(8, 50, 50, generator=g).mul(3).softmax(-1)  # attention maps
    for x in (low_rank, attn):
        ref = torch.linalg.matrix_norm(x.double(), ord="nuc")
        assert torch.allclose(nuclear_norm(x), ref, rtol=1e-4, atol=0)


def test_nuclear_sensitivity_falls_with_bits_on_tiny_vit(calib_images):
    probe = QuantProbe(make_tiny_vit(), calib_images, init="percentile", ref_bits=8)
    units, _ = find_units(probe.qmodel, calib_images[:1])
    omega, nuc = nuclear_sensitivity(probe, units, [3, 4, 6, 8], calib_images.split(8))
    assert set(omega) == {"blocks.0.msa", "blocks.0.mlp", "blocks.1.msa", "blocks.1.mlp"}
    for name, per_bits in omega.items():
        assert nuc[name] > 0
        # each unit's Omega shrinks by at least 4x from 3 to 8 bits and never grows with bits
        assert per_bits[3] > 4 * per_bits[8] > 0, (name, per_bits)
        vals = [per_bits[b] for b in (3, 4, 6, 8)]
        assert all(a >= b for a, b in zip(vals, vals[1:])), (name, per_bits)
    # the attention map of a softmax row has nuclear norm >= 1 (its rows are probability vectors)
    assert all(nuc[n] >= 1.0 - 1e-6 for n in nuc if n.endswith(".msa"))
    # the probe is left in float
    assert not any(op.quant_enabled for op in probe.ops.values())

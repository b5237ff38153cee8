import torch

from vitq.quantizers.affine import AffineQuantizer
from vitq.quantizers.ptf import PowerOfTwoFactorQuantizer
from vitq.quantizers.uniform import fake_quantize, max_scale


def test_ptf_gives_small_channels_finer_intervals():
    """Residual-stream-like input (a few channels 30x larger): per-channel power-of-two factors on one
    interval; error much lower than one per-tensor interval (measured 12.9x)."""
    g = torch.Generator().manual_seed(0)
    spread = torch.ones(64)
    spread[:4] = 30.0
    x = torch.randn(2048, 64, generator=g) * spread
    q = PowerOfTwoFactorQuantizer(8, num_channels=64, max_exponent=3)
    q.init_max(x)
    q.enabled = True
    assert set(q.exponent[:4].tolist()) == {3.0} and q.exponent[4:].max() < 3
    scales = q.channel_scales()
    ratios = torch.log2(scales / q.scale)
    assert torch.equal(ratios.round(), ratios)  # every channel interval is Delta * 2^alpha
    err_ptf = (q(x) - x).pow(2).mean()
    err_pt = (fake_quantize(x, max_scale(x, 8), 8) - x).pow(2).mean()
    assert err_ptf < err_pt / 10


def test_affine_covers_an_asymmetric_range_with_2b_levels():
    x = torch.rand(10000) * 3 - 0.5  # [-0.5, 2.5]
    q = AffineQuantizer(4)
    q.init_max(x)
    q.enabled = True
    levels = q.levels()
    assert len(levels) == 16 and 0.0 in levels.tolist()
    half = float(q.scale) / 2  # the rounded zero point moves the range by up to half a step
    assert levels.min() <= x.min() + half and levels.max() >= x.max() - half
    got = torch.unique(q(x).double())
    assert (got[:, None] - levels[None, :]).abs().min(dim=1).values.max() < 1e-6  # every output is a level
    # a symmetric quantizer at the same bits wastes the negative half: larger error
    err_sym = (fake_quantize(x, max_scale(x, 4), 4) - x).pow(2).mean()
    assert (q(x) - x).pow(2).mean() < err_sym


def test_affine_max_range_contains_zero_so_the_zero_point_is_a_code():
    """An all-positive tensor (a softmax map): the range starts at 0, the zero point is code 0, the levels
    include 0; an all-negative one ends at 0 (zero point 2^b - 1)."""
    for x, z in ((torch.rand(1000) * 0.5 + 0.2, 0), (-torch.rand(1000) - 0.3, 15)):
        q = AffineQuantizer(4)
        q.init_max(x)
        assert float(q.zero_point) == z and 0.0 in q.levels().tolist()
        assert abs(q.levels().abs().max().item() - x.abs().max().item()) < 1e-6

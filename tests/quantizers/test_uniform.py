import pytest
import torch

from vitq.errors import ConfigError
from vitq.quantizers import UniformQuantizer, check_bits, fake_quantize, qrange, quantize


@pytest.mark.parametrize("bits", [2, 4, 6, 8], ids=lambda b: f"b{b}")
def test_codes_equal_torch_fake_quantize(bits):
    """Eq. 8 codes equal torch.fake_quantize_per_tensor_affine's (round half to even, clamp to the signed range).

    torch multiplies by 1/scale where ONNX QuantizeLinear (and vitq) divides by scale; the two can differ
    by one ulp, which flips a code only when x/scale lies within ~1e-6 of a rounding tie. We assert full
    equality with a power-of-two scale (exact in both) and, for arbitrary scales, that every mismatch is such a tie.
    """
    g = torch.Generator().manual_seed(bits)
    qmin, qmax = qrange(bits)
    x = torch.randn(200_000, generator=g) * 3
    for scale in (2.0**-5, 0.0173, 0.41):
        ref = torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)
        ours = fake_quantize(x, torch.tensor(scale), bits)
        mismatch = ref != ours
        if scale == 2.0**-5:
            assert not mismatch.any()
        r = (x[mismatch] / scale).abs()
        assert torch.allclose(r - r.floor(), torch.full_like(r, 0.5), atol=1e-4)
        assert mismatch.float().mean() < 1e-4


def test_round_half_to_even_like_onnx():
    s = torch.tensor(1.0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert quantize(x, s, 8).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0]


def test_clamp_range_signed_and_unsigned():
    x = torch.tensor([-1000.0, 1000.0])
    assert quantize(x, torch.tensor(1.0), 4).tolist() == [-8, 7]
    assert quantize(x, torch.tensor(1.0), 4, signed=False).tolist() == [0, 15]


def test_per_channel_quantizer_codes_and_dtype():
    w = torch.randn(6, 10)
    q = UniformQuantizer(bits=4, axis=0, num_channels=6)
    q.init_max(w)
    q.enabled = True
    codes = q.codes(w)
    assert codes.dtype == torch.int8
    # every row reaches its top code exactly once at the max |w| (the interval covers max|w|)
    assert (codes.abs().amax(dim=1) == 7).all()
    assert torch.allclose(q(w), codes.float() * q.scale.view(-1, 1))


def test_disabled_quantizer_is_identity():
    q = UniformQuantizer(bits=2)
    x = torch.randn(5)
    assert torch.equal(q(x), x)


@pytest.mark.parametrize("bits", [1, 17, 0, 8.0, True, "8"])
def test_bad_bits_raise(bits):
    with pytest.raises(ConfigError, match="2..16"):
        check_bits(bits)


def test_scale_is_a_buffer_in_state_dict():
    q = UniformQuantizer(bits=8)
    assert "scale" in q.state_dict()

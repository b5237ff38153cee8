"""The fused (torch.compile) quantization kernels compute exactly what the eager Eq. 8 computes."""

import pytest
import torch

from vitq.quantizers import kernels
from vitq.quantizers.uniform import fake_quantize


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("VITQ_COMPILE", "1")
    kernels.reset()
    yield kernels._kernels()
    kernels.reset()


def test_fused_kernels_equal_the_eager_quantizer(compiled):
    if not compiled:
        pytest.skip("torch.compile is not available on this machine (the eager fallback is what runs)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 65, generator=g) * 5
    x[0, :20] = (torch.arange(20) - 9.5) * 0.25  # exact ties at scale 0.25
    for scale in (torch.tensor(0.25), torch.rand(65, generator=g) + 0.05):
        for bits in (8, 6, 4):
            qmax = 2 ** (bits - 1) - 1
            out = kernels.fake_quant_into(x, scale, -qmax - 1, qmax, torch.empty_like(x))
            assert torch.equal(out, fake_quantize(x, scale, bits))
            codes = kernels.codes_into(x, scale, -qmax - 1, qmax, torch.empty(x.shape, dtype=torch.int8))
            assert torch.equal(codes.float() * scale, fake_quantize(x, scale, bits))


def test_eager_fallback_when_disabled(monkeypatch):
    monkeypatch.setenv("VITQ_COMPILE", "0")
    kernels.reset()
    assert kernels._kernels() is False
    x = torch.randn(10, 7)
    out = kernels.fake_quant_into(x, torch.tensor(0.1), -8, 7, torch.empty_like(x))
    assert torch.equal(out, fake_quantize(x, torch.tensor(0.1), 4))
    kernels.reset()


@pytest.mark.parametrize("enabled", ["1", "0"])
def test_sample_moments_fused_and_eager_agree_with_float64(monkeypatch, enabled):
    monkeypatch.setenv("VITQ_COMPILE", enabled)
    kernels.reset()
    g = torch.Generator().manual_seed(0)
    o, t = torch.randn(6, 30000, generator=g) + 0.3, torch.randn(6, 30000, generator=g)
    dot, sq, total = kernels.sample_moments(o, t)
    od, td = o.double(), t.double()
    for got, want in ((dot, (od * td).sum(1)), (sq, (od * od).sum(1)), (total, od.sum(1))):
        assert got.shape == (6,) and torch.allclose(got.double(), want, rtol=1e-5, atol=1e-2)
    kernels.reset()

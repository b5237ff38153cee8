"""The fused (torch.compile) quantization kernels compute exactly what the eager Eq. 8 computes."""

import pytest
import torch

from vitq.quantizers import kernels
from vitq.quantizers.uniform import fake_quantize


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("VITQ_COMPILE", "1")
    monkeypatch.setenv("VITQ_FUSED_MIN_NUMEL", "0")  # these small tensors too
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


def test_small_tensors_never_compile(monkeypatch):
    """Below the size threshold the eager ops run and the compiler is never started (the demo's case)."""
    monkeypatch.setenv("VITQ_COMPILE", "1")
    monkeypatch.delenv("VITQ_FUSED_MIN_NUMEL", raising=False)
    kernels.reset()
    x = torch.randn(1600, 192)  # fmnist-vit's largest activations (32 images)
    out = kernels.fake_quant_into(x, torch.tensor(0.1), -128, 127, torch.empty_like(x))
    assert torch.equal(out, fake_quantize(x, torch.tensor(0.1), 8))
    kernels.codes_into(x, torch.tensor(0.1), -128, 127, torch.empty(x.shape, dtype=torch.int8))
    kernels.sample_moments(x.reshape(32, -1), x.reshape(32, -1))
    assert kernels._state["compiled"] is None and kernels._state.get("moments") is None
    w = torch.randn(101, 288, 96)  # the demo's largest stack of candidate weights: used a few times per op
    kernels.codes_into(w, torch.full((101, 1, 1), 0.1), -128, 127, torch.empty_like(w))
    assert kernels._state["compiled"] is None and kernels._state.get("moments") is None
    kernels.reset()


def test_compiled_kernels_serve_medium_tensors_once_started(monkeypatch):
    """A 4 M-element tensor starts the compiler; then 1 M-element ones use the (bit-exact) fused kernels too."""
    monkeypatch.setenv("VITQ_COMPILE", "1")
    monkeypatch.delenv("VITQ_FUSED_MIN_NUMEL", raising=False)
    kernels.reset()
    scale = torch.tensor(0.1)
    medium = torch.randn(1024, 1024)
    kernels.fake_quant_into(medium, scale, -128, 127, torch.empty_like(medium))
    assert kernels._state["compiled"] is None  # 1 M elements do not start it
    large = torch.randn(4096, 1024)
    kernels.fake_quant_into(large, scale, -128, 127, torch.empty_like(large))
    if not kernels._state["compiled"]:
        pytest.skip("torch.compile is not available on this machine")
    calls = []
    fq, codes = kernels._state["compiled"]
    monkeypatch.setitem(kernels._state, "compiled", (lambda *a: calls.append(a) or fq(*a), codes))
    out = kernels.fake_quant_into(medium, scale, -128, 127, torch.empty_like(medium))
    assert len(calls) == 1 and torch.equal(out, fake_quantize(medium, scale, 8))
    small = torch.randn(1000, 1000)  # below 1 M: eager
    kernels.fake_quant_into(small, scale, -128, 127, torch.empty_like(small))
    assert len(calls) == 1
    kernels.reset()


@pytest.mark.parametrize("enabled", ["1", "0"])
def test_sample_moments_fused_and_eager_agree_with_float64(monkeypatch, enabled):
    monkeypatch.setenv("VITQ_COMPILE", enabled)
    monkeypatch.setenv("VITQ_FUSED_MIN_NUMEL", "0")
    kernels.reset()
    g = torch.Generator().manual_seed(0)
    o, t = torch.randn(6, 30000, generator=g) + 0.3, torch.randn(6, 30000, generator=g)
    dot, sq, total = kernels.sample_moments(o, t)
    od, td = o.double(), t.double()
    for got, want in ((dot, (od * td).sum(1)), (sq, (od * od).sum(1)), (total, od.sum(1))):
        assert got.shape == (6,) and torch.allclose(got.double(), want, rtol=1e-5, atol=1e-2)
    kernels.reset()

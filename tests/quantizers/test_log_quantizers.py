import math

import pytest
import torch

from vitq.quantizers.log import Log2Quantizer, LogSqrt2Quantizer, quantile


def _dense_unit_interval(delta: float) -> torch.Tensor:
    # log-spaced down to far below the smallest level, plus exact zero
    return torch.cat([torch.zeros(1), delta * torch.logspace(-12, 0, 200001, base=2.0)])


@pytest.mark.parametrize("bits", [3, 4])
def test_log_sqrt2_value_set_is_repq_definition(bits):
    """RepQ-ViT: x_hat = D * 2^(-q/2), q in 0..2^b-1, and 0 below the smallest level (2^b + 1 values)."""
    q = LogSqrt2Quantizer(bits)
    q.scale.fill_(0.8)
    q.enabled = True
    x = _dense_unit_interval(0.8 * 1.5)  # includes inputs above D (clamped to code 0)
    got = torch.unique(q(x).double())
    expect = torch.cat([torch.zeros(1, dtype=torch.float64),
                        0.8 * torch.pow(2.0, -torch.arange(0, 2**bits, dtype=torch.float64) / 2)]).sort().values
    assert len(got) == 2**bits + 1
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=0)
    torch.testing.assert_close(q.levels(), expect, rtol=1e-6, atol=0)


def test_log2_value_set_is_fqvit_definition():
    """FQ-ViT log2 softmax quantizer: 2^-q, q in 0..2^b-1, and 0."""
    q = Log2Quantizer(3)
    q.init_max(torch.rand(10))
    q.enabled = True
    got = torch.unique(q(_dense_unit_interval(1.0)).double())
    expect = torch.cat([torch.zeros(1, dtype=torch.float64), torch.pow(2.0, -torch.arange(0, 8.0, dtype=torch.float64))])
    torch.testing.assert_close(got, expect.sort().values, rtol=1e-7, atol=0)


def test_log_sqrt2_rounds_in_the_log_domain():
    q = LogSqrt2Quantizer(4)
    q.scale.fill_(1.0)
    x = torch.tensor([1.0, 0.75, 0.7, 2 ** -7.2, 2 ** -7.3])
    # -2 log2 x = 0, 0.83, 1.03, 14.4, 14.6 -> q = 0, 1, 1, 14, 15
    expect = torch.tensor([1.0, 2**-0.5, 2**-0.5, 2.0**-7, 2**-7.5])
    torch.testing.assert_close(q.fake_quant_with(x, q.scale), expect, rtol=1e-6, atol=0)


def test_log_sqrt2_search_picks_among_repq_candidates():
    g = torch.Generator().manual_seed(0)
    att = torch.softmax(torch.randn(8, 4, 16, 16, generator=g) * 3, dim=-1)
    v = torch.randn(8, 4, 16, 8, generator=g)
    target = att @ v
    q = LogSqrt2Quantizer(4)
    q.init_max(att)

    def loss(aq):
        return (aq @ v - target).pow(2).mean().item()

    start = loss(q.fake_quant_with(att, q.scale))
    end = q.search(att, loss, start, q.scale.clone(), [1.0])
    assert end <= start
    cands = [float(att.max())] + [float(quantile(att, p)) for p in (0.999, 0.9999, 0.99999)]
    assert any(math.isclose(float(q.scale), c, rel_tol=1e-6) for c in cands)

import pytest
import torch
from conftest import make_tiny_vit

import vitq
from vitq.errors import ConfigError
from vitq.mp.hessian import hessian_sensitivity, hutchinson_trace
from vitq.mp.units import find_units


def quadratic(a: torch.Tensor, x: torch.Tensor):
    return lambda: 0.5 * x @ a @ x


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    x = torch.randn(12, requires_grad=True)
    a = torch.diag(torch.linspace(-1, 3, 12))
    est = hutchinson_trace(quadratic(a, x), [[x]], 1, torch.Generator().manual_seed(0))
    assert est.item() == pytest.approx(a.trace().item(), rel=1e-6)


def test_hutchinson_matches_exact_trace_of_a_dense_quadratic():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(10, 10, generator=g)
    a = m @ m.T / 10 + torch.eye(10)  # SPD, trace ~ 20
    x = torch.randn(10, requires_grad=True)
    n = 2000
    est = hutchinson_trace(quadratic(a, x), [[x]], n, torch.Generator().manual_seed(1)).item()
    # Rademacher variance: 2 * sum_{i != j} a_ij^2 per sample
    std = (2 * (a.pow(2).sum() - a.diag().pow(2).sum()) / n).sqrt().item()
    assert abs(est - a.trace().item()) < 4 * std
    assert abs(est - a.trace().item()) / a.trace().item() < 0.05


def test_hutchinson_groups_give_diagonal_blocks():
    x, y = torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)
    # f = x^T A x + 5 * sum(y^2) + x.sum() * y.sum(): each group's estimate targets its own diagonal block
    # (the cross term only adds zero-mean noise, std sqrt(12 / 400) = 0.17 here)
    a = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 4.0]])

    def loss():
        return x @ a @ x + 5 * y.pow(2).sum() + x.sum() * y.sum()

    est = hutchinson_trace(loss, [[x], [y]], 400, torch.Generator().manual_seed(0))
    assert est[0].item() == pytest.approx(2 * a.trace().item(), abs=1.0)  # 14
    assert est[1].item() == pytest.approx(40.0, abs=1.0)  # diagonal block 10 * I_4


def test_hessian_sensitivity_on_tiny_vit_is_seeded_and_positive(calib_images):
    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig())
    flags = [p.requires_grad for p in q.parameters()]
    units, _ = find_units(q, calib_images[:1])
    batches = calib_images[:8].split(4)
    omega, traces = hessian_sensitivity(q, units, [4, 8], batches, num_samples=4, seed=0)
    omega2, traces2 = hessian_sensitivity(q, units, [4, 8], batches, num_samples=4, seed=0)
    assert traces == traces2  # seeded
    for u in units:
        assert traces[u.name] > 0  # the KL Hessian at the float point is PSD (Gauss-Newton)
        assert omega[u.name][4] > 10 * omega[u.name][8] > 0
    # parameters are left as they were: same requires_grad flags, no .grad accumulated
    assert [p.requires_grad for p in q.parameters()] == flags
    assert all(p.grad is None for p in q.parameters())


def test_hessian_refuses_weightless_units(calib_images):
    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig())
    units, _ = find_units(q, calib_images[:1], granularity="op")
    with pytest.raises(ConfigError, match="no weights"):
        hessian_sensitivity(q, units, [4, 8], [calib_images[:2]], num_samples=1)

import torch

from vitq.calibration.search.objectives import RankingPairs, TargetStats, objective_sum


def test_pearson_is_eq12_per_sample():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 50, generator=g)
    o = t + 0.3 * torch.randn(4, 50, generator=g)
    stats = TargetStats(t, "pearson")
    expect = -sum(torch.corrcoef(torch.stack([t[i], o[i]]))[0, 1].item() for i in range(4))
    assert abs(objective_sum(o, stats, slice(0, 4)) - expect) < 1e-5


def test_pearson_ignores_affine_changes_cosine_does_not():
    t = torch.randn(2, 30)
    for obj, invariant in (("pearson", True), ("cosine", False)):
        stats = TargetStats(t, obj)
        loss = objective_sum(2 * t + 1, stats, slice(0, 2))
        assert (abs(loss + 2) < 1e-5) == invariant


def test_ranking_loss_zero_for_same_order_positive_for_swaps():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 10, 10, generator=g)
    pairs = RankingPairs.build(scores, num_pairs=0, margin=0.0, generator=g)
    assert pairs.p.numel() == 45  # all pairs p < q of a 10-key row (Eq. 10)
    assert pairs.loss_sum(scores * 3 + 1, slice(0, 2)) == 0.0  # order kept -> no loss
    assert pairs.loss_sum(-scores, slice(0, 2)) > 0.0


def test_ranking_pairs_sampled_with_seed():
    scores = torch.randn(1, 1, 50, 50)
    a = RankingPairs.build(scores, 64, 0.0, torch.Generator().manual_seed(3))
    b = RankingPairs.build(scores, 64, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(a.p, b.p) and torch.equal(a.q, b.q)
    assert (a.p != a.q).all()

import torch
from conftest import make_tiny_vit

from vitq.mp import search_plan
from vitq.mp.report import plot_plan


def test_plot_plan_writes_a_png(tmp_path):
    g = torch.Generator().manual_seed(1)
    res = search_plan(make_tiny_vit(), torch.randn(8, 3, 32, 32, generator=g), method="nuclear", bits=6)
    path = plot_plan(res, tmp_path / "sub" / "plan.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

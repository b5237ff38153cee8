"""The functional capture of attention products (vitq.nn.capture): SDPA's decomposition is SDPA."""

import pytest
import torch
import torch.nn.functional as F

from vitq.nn.capture import sdpa_decomposed


@pytest.mark.parametrize("case", ["plain", "bool-mask", "bias", "causal", "scale", "gqa"])
def test_sdpa_decomposition_matches_sdpa(case):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    kw = {}
    if case == "bool-mask":
        kw["attn_mask"] = torch.rand(6, 6, generator=g) > 0.3
        kw["attn_mask"].fill_diagonal_(True)
    elif case == "bias":
        kw["attn_mask"] = torch.randn(4, 6, 6, generator=g)  # a relative-position bias
    elif case == "causal":
        kw["is_causal"] = True
    elif case == "scale":
        kw["scale"] = 0.3
    elif case == "gqa":
        k, v = k[:, :2], v[:, :2]
        kw["enable_gqa"] = True
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    assert torch.allclose(sdpa_decomposed(q, k, v, **kw), ref, atol=1e-6, rtol=1e-5)

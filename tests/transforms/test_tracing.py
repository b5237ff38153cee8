import torch
import torch.nn as nn
from conftest import make_tiny_vit

from vitq.transforms.tracing import gelu_types, trace_consumers


def test_block_data_flow_is_found_by_tensor_identity(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    norms = trace_consumers(tiny_vit, lambda: tiny_vit(x), lambda m: isinstance(m, nn.LayerNorm),
                            lambda m: isinstance(m, nn.Linear))
    assert norms == {f"blocks.{i}.norm{j}": [f"blocks.{i}.{li}"] for i in range(2) for j, li in
                     ((1, "attn.qkv"), (2, "mlp.fc1"))}
    gelus = trace_consumers(tiny_vit, lambda: tiny_vit(x), lambda m: isinstance(m, gelu_types()),
                            lambda m: isinstance(m, nn.Linear))
    assert gelus == {f"blocks.{i}.mlp.act": [f"blocks.{i}.mlp.fc2"] for i in range(2)}


def test_hooks_are_removed_after_tracing():
    m = make_tiny_vit()
    trace_consumers(m, lambda: m(torch.randn(1, 3, 32, 32)), lambda _m: True, lambda _m: True)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())

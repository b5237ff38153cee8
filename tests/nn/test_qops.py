import torch
import torch.nn as nn

from vitq.nn.qops import OpQuantSpec, QuantConv2d, QuantLinear, QuantMatMul
from vitq.nn.registry import qmodule_for


def test_registry_maps_exact_classes():
    assert qmodule_for(nn.Linear(2, 2)) is QuantLinear
    assert qmodule_for(nn.Conv2d(1, 1, 1)) is QuantConv2d

    class MyLinear(nn.Linear):
        pass

    assert qmodule_for(MyLinear(2, 2)) is None  # subclasses are not swapped silently


def test_quant_linear_shares_weights_and_matches_float_when_disabled():
    lin = nn.Linear(8, 4)
    q = QuantLinear.from_module(lin, OpQuantSpec(w_bits=4, a_bits=4))
    assert q.weight is lin.weight and q.bias is lin.bias
    x = torch.randn(3, 8)
    assert torch.equal(q(x), lin(x))


def test_quant_linear_enabled_is_eq9():
    lin = nn.Linear(8, 4, bias=False)
    q = QuantLinear.from_module(lin, OpQuantSpec(w_bits=8, a_bits=8))
    x = torch.randn(3, 8)
    q.input_quantizer.init_max(x)
    q.weight_quantizer.init_max(lin.weight)
    q.set_enabled(True)
    # Eq. 9: O_hat = Psi(X) Psi(W) * Delta_W * Delta_X
    expect = (q.input_quantizer.codes(x).float() @ q.weight_quantizer.codes(lin.weight).float().T) * (
        q.input_quantizer.scale * q.weight_quantizer.scale
    )
    torch.testing.assert_close(q(x), expect, rtol=1e-5, atol=1e-6)


def test_quant_conv_matches_float_when_disabled():
    conv = nn.Conv2d(3, 8, 4, stride=4)
    q = QuantConv2d.from_module(conv, OpQuantSpec())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(q(x), conv(x))


def test_quant_matmul_quantizes_both_operands():
    mm = QuantMatMul("attn_scores", OpQuantSpec(a_bits=4))
    a, b = torch.randn(2, 5, 3), torch.randn(2, 3, 5)
    mm.a_quantizer.init_max(a)
    mm.b_quantizer.init_max(b)
    mm.set_enabled(True)
    torch.testing.assert_close(mm(a, b), mm.a_quantizer(a) @ mm.b_quantizer(b))
    assert len(torch.unique(mm.a_quantizer(a))) <= 16

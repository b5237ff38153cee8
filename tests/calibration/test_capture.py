"""Op data capture stops the unit's forward after the op, without changing what is captured."""

import torch
import torch.nn as nn

from vitq.calibration.capture import collect_op_io
from vitq.calibration.engine import _op_call_order


class Unit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.after_b = 0

    def forward(self, x):
        x = self.a(self.a(x))  # called twice per forward
        x = self.b(x)
        self.after_b += 1  # work done after the last op
        return x


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [((torch.randn(3, 4, generator=g),), {}) for _ in range(3)]


def test_call_order_and_counts():
    unit, inputs = Unit(), _inputs()
    calls = _op_call_order(unit, inputs, {"b": unit.b, "a": unit.a})
    assert list(calls) == ["a", "b"] and calls == {"a": 2, "b": 1}


def test_early_stop_captures_what_the_full_forward_does():
    unit, inputs = Unit(), _inputs()
    with torch.no_grad():
        full = collect_op_io(unit, inputs, unit.a)
        assert unit.after_b == 3
        early = collect_op_io(unit, inputs, unit.a, calls_per_forward=2)
        assert unit.after_b == 3  # every forward stopped after a's second call
        assert len(early) == len(full) == 6
        for (ia, oa), (ib, ob) in zip(full, early):
            assert torch.equal(ia[0], ib[0]) and torch.equal(oa, ob)
        early_b = collect_op_io(unit, inputs, unit.b, calls_per_forward=1)
        assert len(early_b) == 3 and unit.after_b == 3

"""Capturing what flows into a module: unit inputs (stop the forward there) and op inputs/outputs
(stop the forward after the op)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from vitq.errors import NonFiniteError

Args = tuple[tuple, dict]


class _StopForward(Exception):
    pass


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def capture_unit_inputs(model: nn.Module, unit: nn.Module, batches: Sequence[torch.Tensor],
                        forward: Callable[[nn.Module, torch.Tensor], object]) -> list[Args]:
    """Run the model on each batch until ``unit`` is reached; return the unit's ``(args, kwargs)`` per batch."""
    captured: list[Args] = []

    def hook(_mod, args, kwargs):
        captured.append((_detach(args), _detach(kwargs)))
        raise _StopForward

    h = unit.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in batches:
            try:
                forward(model, b)
            except _StopForward:
                continue
            raise RuntimeError(f"the forward pass never reached calibration unit {type(unit).__name__}")
    finally:
        h.remove()
    return captured


def run_unit(unit: nn.Module, inputs: Sequence[Args]) -> list:
    return [unit(*args, **kwargs) for args, kwargs in inputs]


def collect_op_io(unit: nn.Module, inputs: Sequence[Args], op: nn.Module, calls_per_forward: int | None = None) -> list:
    """``(inputs, output)`` of every call of ``op`` while ``unit`` runs on each of ``inputs``.

    With ``calls_per_forward=k`` each forward stops right after the op's k-th call: what the unit
    computes after it cannot change the op's data (the unit's control flow does not depend on the
    batch, so k is counted once on the first batch). On a transformer block this skips about half of
    the block's arithmetic for the average op.
    """
    store: list = []
    calls = 0

    def hook(_mod, args, output):
        nonlocal calls
        store.append((tuple(a.detach() for a in args), output.detach()))
        calls += 1
        if calls == calls_per_forward:
            raise _StopForward

    h = op.register_forward_hook(hook)
    try:
        for args, kwargs in inputs:
            calls = 0
            try:
                unit(*args, **kwargs)
            except _StopForward:
                pass
    finally:
        h.remove()
    return store


def check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise NonFiniteError(f"{bad} non-finite values (NaN/inf) in {what}; check the input images and the float model")

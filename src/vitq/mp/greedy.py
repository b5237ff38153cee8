"""Greedy mixed precision in the spirit of MPTQ-ViT (Tai & Wu 2024); the details are our design
(``mptq-vit-design.md``, "Greedy MP [D]").

Every unit starts at the highest candidate bit-width. At each step every unit is tried one candidate
lower (weights and inputs together), the calibration loss ``KL(p_float || p_quantized)`` of the whole
model is measured with that change, and the drop with the smallest loss increase per bit saved
(bits saved = weight count x bit step) is applied. Once the model fits the budget, an optional refill
pass spends the slack: it raises the unit whose raise lowers the loss most per bit, while it fits.
Intervals come from the cheap probe (:mod:`vitq.mp.probe`); only calibration images are used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vitq.errors import ConfigError
from vitq.mp.probe import QuantProbe
from vitq.mp.size import SizeModel
from vitq.mp.units import MPUnit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GreedyStep:
    """One applied change: ``unit`` now at ``bits``; model size (bits) and calibration loss after it."""

    unit: str
    bits: int
    size_bits: int
    loss: float


class _Loss:
    """Mean ``KL(p_float || p_quantized)`` of the probe's current configuration over the calibration images."""

    def __init__(self, probe: QuantProbe, batches: Sequence[torch.Tensor]):
        self.probe, self.batches = probe, batches
        self.n = sum(b.shape[0] for b in batches)
        state = {n: op.quant_enabled for n, op in probe.ops.items()}
        probe.enable_all(False)
        with torch.no_grad():
            self.ref = [F.softmax(probe.logits(b), dim=-1) for b in batches]
        for n, on in state.items():
            probe.ops[n].set_enabled(on)
        self.calls = 0

    @torch.no_grad()
    def __call__(self) -> float:
        self.calls += 1
        total = 0.0
        for b, ref in zip(self.batches, self.ref):
            logp = F.log_softmax(self.probe.logits(b), dim=-1)
            total += F.kl_div(logp, ref, reduction="sum").item()
        return total / self.n


def greedy_allocate(probe: QuantProbe, units: Sequence[MPUnit], candidates: Sequence[int], size: SizeModel,
                    capacity: int, batches: Sequence[torch.Tensor], *, fixed_ops: Sequence[str] = (),
                    refill: bool = True, progress: bool = False
                    ) -> tuple[list[int], list[GreedyStep], dict[str, dict[int, float]]]:
    """Lower units greedily until the model size is at most ``capacity`` bits.

    Args:
        probe: the cheaply calibrated model; fixed ops get ``size.base_bits``.
        units, candidates: the units and their sorted candidate bit-widths.
        size: the size model of these units; ``capacity``: the budget in bits.
        batches: calibration image batches the loss is measured on.
        fixed_ops: ops outside every unit (quantized at the base bit-width during the search).
        refill: after meeting the budget, raise units while they fit and lower the loss.

    Returns:
        ``(bits per unit, applied steps, loss[unit][b] last measured with the unit tried at b)``.
    """
    cands = sorted(candidates)
    probe.enable_all(False)
    probe.set_bits(fixed_ops, size.base_bits, enabled=True)
    idx = [len(cands) - 1] * len(units)
    for u in units:
        probe.set_bits(u.ops, cands[-1], enabled=True)
    loss = _Loss(probe, batches)
    current = loss()
    trials: dict[str, dict[int, float]] = {u.name: {cands[-1]: current} for u in units}
    steps: list[GreedyStep] = []
    bits_now = lambda: [cands[i] for i in idx]  # noqa: E731

    def try_bits(i: int, j: int) -> float:
        u = units[i]
        probe.set_bits(u.ops, cands[j])
        value = loss()
        probe.set_bits(u.ops, cands[idx[i]])
        trials[u.name][cands[j]] = value
        return value

    bar = tqdm(desc="greedy MP", unit="step", disable=not progress)
    while size.bits(bits_now()) > capacity:
        best = None
        for i, u in enumerate(units):
            if idx[i] == 0 or u.weight_numel == 0:
                continue
            value = try_bits(i, idx[i] - 1)
            score = (value - current) / (u.weight_numel * (cands[idx[i]] - cands[idx[i] - 1]))
            if best is None or score < best[0]:
                best = (score, i, value)
        if best is None:
            raise ConfigError(f"greedy MP cannot reach {capacity / 8e6:.4f} MB: every unit is at {cands[0]} bits")
        _, i, current = best
        idx[i] -= 1
        probe.set_bits(units[i].ops, cands[idx[i]])
        steps.append(GreedyStep(units[i].name, cands[idx[i]], size.bits(bits_now()), current))
        bar.update()
    while refill:
        best = None
        used = size.bits(bits_now())
        for i, u in enumerate(units):
            if idx[i] == len(cands) - 1 or u.weight_numel == 0:
                continue
            if used + u.weight_numel * (cands[idx[i] + 1] - cands[idx[i]]) > capacity:
                continue
            value = try_bits(i, idx[i] + 1)
            gain = (current - value) / (u.weight_numel * (cands[idx[i] + 1] - cands[idx[i]]))
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, i, value)
        if best is None:
            break
        _, i, current = best
        idx[i] += 1
        probe.set_bits(units[i].ops, cands[idx[i]])
        steps.append(GreedyStep(units[i].name, cands[idx[i]], size.bits(bits_now()), current))
        bar.update()
    bar.close()
    log.info("greedy MP: %d steps, %d loss evaluations, final calibration KL %.4g", len(steps), loss.calls, current)
    return bits_now(), steps, trials

"""Block reconstruction (BRECQ, Li et al. ICLR 2021; QDrop, Wei et al. ICLR 2022), after a unit's search.

The interval search chooses each op's grid alone; reconstruction then tunes the whole unit (a
transformer block, the patch embedding) against the float unit:

- **weights' rounding** (AdaRound, Nagel et al. ICML 2020): every weight of a Linear / Conv takes
  ``floor(W/s) + h(V)`` on its searched grid ``s``, with ``h`` a rectified sigmoid in [0, 1] initialised
  at the weight's fractional part (so training starts at the float weight); a regulariser
  ``lambda * sum(1 - |2h - 1|^beta)``, with ``beta`` annealed from 20 to 2 after a warm-up, drives every
  ``h`` to 0 or 1; at the end each weight is rounded up where ``h >= 1/2`` and written back on its grid.
- **activation intervals** (LSQ, Esser et al. ICLR 2020): each per-tensor uniform activation interval
  of the unit (Linear inputs, both operands of the attention products), symmetric or asymmetric (its
  integer zero point kept), is a learned value, the rounding differentiated straight through
  (:func:`vitq.quantizers.uniform.fake_quantize`); the other quantizer kinds keep their searched state and
  pass gradients straight through.
- **objective**: ``|f_q(x) - f(x_float)|^2`` summed over features, averaged over tokens, where ``f`` is the
  float unit on the float model's inputs to it (BRECQ's target) and ``x`` mixes, element by element, the
  quantized model's inputs with the float ones (QDrop's drop probability ``p``; ``p = 0`` is BRECQ).

A unit called with more than its input (a DETR layer: attention mask, position embeddings, the encoder's
output) gets the rows of those that go with its input's rows (:class:`UnitRows`).

Adam over ``iters`` steps of ``batch_size`` calibration images, with a seeded generator for the batch
and drop samples, so one seed gives one result. In a data-parallel run (``torchrun``) each rank keeps its
shard of the images; every rank draws the same minibatch of global indices and drop samples, runs the
rows of it that it holds, and the gradients are summed over the ranks before each step, as
``DistributedDataParallel`` does (:func:`vitq.distributed.all_reduce_grads`): the same training as one
process up to float summation order in the gradients. The unit's output error on all calibration images is
measured before and after; if reconstruction made it worse, the searched state is put back (never
worse than the search on the calibration set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from vitq.calibration.capture import capture_unit_inputs, run_unit
from vitq.distributed import all_reduce_grads, rank, shard_count, shard_range, shard_sum
from vitq.errors import VitqError
from vitq.nn.qops import QuantOp, quantization_disabled
from vitq.quantizers.affine import AffineQuantizer
from vitq.quantizers.uniform import UniformQuantizer
from vitq.recipes import Reconstruction

log = logging.getLogger(__name__)

#: AdaRound's stretch of the sigmoid: h = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)
ZETA, GAMMA = 1.1, -0.1


class AdaRoundWeight(nn.Module):
    """An op's weight quantizer while its unit is reconstructed: codes ``floor(W/s) + h(V)`` on the grid of
    the wrapped :class:`UniformQuantizer` (whose ``scale`` stays fixed); see the module docstring."""

    def __init__(self, quantizer: UniformQuantizer, weight: torch.Tensor, learn_scale: bool = False):
        super().__init__()
        self.quantizer = quantizer
        with torch.no_grad():
            x = weight.detach() / quantizer.broadcast_scale(weight)
            floor = torch.floor(x)
            p = ((x - floor - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("floor", floor)
        self.v = nn.Parameter(torch.log(p / (1 - p)))
        #: the log of a factor on each interval of the quantizer (learned with ``learn_scale``): the grid
        #: ``codes * scale * exp(log_gain)`` moves with it, the codes' starting point stays
        self.log_gain = nn.Parameter(torch.zeros_like(quantizer.scale)) if learn_scale else None

    @property
    def enabled(self) -> bool:
        return self.quantizer.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.quantizer.enabled = value

    def soft(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        if self.log_gain is None:
            return q.broadcast_scale(w)
        return q.broadcast_scale(w, q.scale * torch.exp(self.log_gain))

    def _weight(self, w: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        return torch.clamp(self.floor + up, q.qmin, q.qmax) * self._scale(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._weight(w, self.soft())

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.soft() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight on its grid with the learned rounding (up where ``h >= 1/2``) and interval."""
        return self._weight(w, (self.v >= 0).to(w.dtype))

    @torch.no_grad()
    def commit_scale(self) -> None:
        """Write the learned intervals into the quantizer (after :meth:`hard_weight`): the frozen codes
        are ``hard_weight / scale`` exactly."""
        if self.log_gain is not None:
            self.quantizer.scale.mul_(torch.exp(self.log_gain))


@dataclass
class ReconstructionResult:
    """One unit's reconstruction: its output error on the calibration images before and after."""

    unit: str
    loss_before: float
    loss_after: float
    iters: int
    seconds: float
    weights: int = 0
    intervals: int = 0
    kept: bool = True


class FloatReference:
    """The float model's inputs and outputs of each unit: reconstruction's targets.

    The float parameters are copied when calibration starts, before any search, bias correction, GPTQ or
    reconstruction changes them in place; :meth:`unit_io` runs the model with them (and quantization
    disabled), so the target of every unit is the float model's, not the float model with the earlier
    units' rounded weights. Consecutive units chain their float outputs as the quantized ones do; other
    units' float inputs are captured from the float model.
    """

    def __init__(self, model: nn.Module):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.inputs: list | None = None

    @contextmanager
    def _float(self, model: nn.Module) -> Iterator[None]:
        params = dict(model.named_parameters())
        current = {n: params[n].data for n in self.params}
        try:
            for n, t in self.params.items():
                params[n].data = t
            with quantization_disabled(model):
                yield
        finally:
            for n, t in current.items():
                params[n].data = t

    @torch.no_grad()
    def unit_io(self, model: nn.Module, unit: nn.Module, batches, forward) -> tuple[list, list[torch.Tensor]]:
        """``(inputs, outputs)`` of ``unit`` in the float model, per calibration batch."""
        with self._float(model):
            if self.inputs is None:
                self.inputs = capture_unit_inputs(model, unit, batches, forward)
            return self.inputs, [_tensor_out(o) for o in run_unit(unit, self.inputs)]

    def advance(self, chained: bool, outputs: list[torch.Tensor]) -> None:
        """After a unit: the next unit's float inputs are its outputs (``chained``) or are captured."""
        self.inputs = [((t,), {}) for t in outputs] if chained else None


class UnitRows:
    """A unit's calibration inputs as rows of one batch, so that minibatches can be drawn across batches.

    ``x`` is the unit's first positional argument, every batch's concatenated (the input reconstruction mixes
    with the float model's); the rest of the call follows along: a tensor whose first dimension is its batch's
    size is concatenated the same way and indexed with the rows (a DETR layer's position embeddings, attention
    mask, encoder output), anything else must be the same in every batch (``None``, a flag) and is passed as is.
    """

    def __init__(self, inputs, unit: str):
        if not inputs or not all(a and isinstance(a[0], torch.Tensor) for a, _ in inputs):
            raise VitqError(f"block reconstruction needs calibration units called with a tensor first; unit "
                            f"{unit!r} is not: turn reconstruction off (recon_iters=0)")
        sizes = [a[0].shape[0] for a, _ in inputs]
        shapes = {tuple(a[0].shape[1:]) for a, _ in inputs}
        if len(shapes) > 1:
            raise VitqError(f"block reconstruction of unit {unit!r}: its calibration batches have inputs of different "
                            f"shapes {sorted(shapes)} (images of different sizes); calibrate on images of one size, "
                            "or turn reconstruction off (recon_iters=0)")
        self.x = torch.cat([a[0] for a, _ in inputs])
        rest = [(dict(enumerate(a[1:])), k) for a, k in inputs]
        if any(len(r) != len(rest[0][0]) or k.keys() != rest[0][1].keys() for r, k in rest):
            raise VitqError(f"block reconstruction of unit {unit!r}: its calibration batches call it with different "
                            "arguments")
        self.args: dict[int, object] = {}
        self.kwargs: dict[str, object] = {}
        self.batched: set = set()
        for store, pick in ((self.args, lambda r: r[0]), (self.kwargs, lambda r: r[1])):
            for key in pick(rest[0]):
                vals = [pick(r)[key] for r in rest]
                if all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n for v, n in zip(vals, sizes)):
                    if len({tuple(v.shape[1:]) for v in vals}) > 1:
                        raise VitqError(f"block reconstruction of unit {unit!r}: argument {key!r} has different "
                                        "shapes in different calibration batches; calibrate on images of one size")
                    store[key] = torch.cat(vals)
                    self.batched.add((store is self.kwargs, key))
                elif all(_same(v, vals[0]) for v in vals):
                    store[key] = vals[0]
                else:
                    raise VitqError(f"block reconstruction of unit {unit!r}: argument {key!r} is neither per image "
                                    "nor the same in every calibration batch")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __call__(self, unit: nn.Module, rows, x: torch.Tensor | None = None):
        """``unit`` on ``rows`` (a slice or an index tensor) of the inputs, its first argument replaced by ``x``."""
        def take(is_kw, key, v):
            return v[rows] if (is_kw, key) in self.batched else v
        args = [take(False, i, self.args[i]) for i in range(len(self.args))]
        kwargs = {k: take(True, k, v) for k, v in self.kwargs.items()}
        return unit(self.x[rows] if x is None else x, *args, **kwargs)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a is b or a == b


def _tensor_out(out) -> torch.Tensor:
    """A unit's output as reconstruction compares it: the output, or the first tensor in it (a transformer
    layer's hidden states; a DETR backbone's ``[(feature_map, mask)]``: the feature map)."""
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise VitqError(f"block reconstruction needs a unit whose output is (or starts with) a tensor, not {type(out).__name__}")
    return out


def _error(out: torch.Tensor, target: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """BRECQ's reconstruction loss: squared error summed over features, averaged over everything else;
    with ``rows``, this part of a minibatch of ``rows`` samples (the others on other ranks): its sum over
    the same average's denominator."""
    per = (out - target).pow(2).flatten(1).sum(1) if out.dim() <= 2 else (out - target).pow(2).sum(-1)
    if rows is None or rows == out.shape[0]:
        return per.mean()
    return per.sum() / (rows * (per.numel() // max(1, out.shape[0])))


@torch.no_grad()
def _loss(unit: nn.Module, rows: UnitRows, target: torch.Tensor, batch: int) -> float:
    """The mean output error over the calibration images (every rank's, in a data-parallel run)."""
    total = 0.0
    for i in range(0, len(rows), batch):
        out = _tensor_out(rows(unit, slice(i, i + batch)))
        total += float(_error(out, target[i: i + batch])) * out.shape[0]
    return shard_sum(total) / shard_count(len(rows))


def _learned_intervals(unit_ops: dict[str, QuantOp]) -> list[UniformQuantizer | AffineQuantizer]:
    """The unit's per-tensor uniform activation quantizers in use, symmetric or with a zero point (which stays):
    Linear / Conv inputs, both matmul operands."""
    found: list[UniformQuantizer | AffineQuantizer] = []
    for op in unit_ops.values():
        qa, qb = op.quantizers()
        for q in (qa,) if op.has_weight else (qa, qb):
            if type(q) in (UniformQuantizer, AffineQuantizer) and q.axis is None and q.enabled and q not in found:
                found.append(q)
    return found


def reconstruct_unit(name: str, unit: nn.Module, unit_ops: dict[str, QuantOp], inputs, float_inputs,
                     float_outputs: list[torch.Tensor], spec: Reconstruction, *, seed: int,
                     batch_size: int = 32) -> ReconstructionResult:
    """Reconstruct one calibrated unit in place (see the module docstring).

    Args:
        name: the unit's qualified name (messages, the result).
        unit: the unit, its ops calibrated and enabled.
        unit_ops: its quantized ops by name.
        inputs: the unit's inputs in the quantized model, ``[(args, kwargs), ...]`` per calibration batch
            (see :class:`UnitRows`).
        float_inputs: the same from the float model.
        float_outputs: the float unit's outputs on ``float_inputs`` (the targets), per batch.
        spec: the recipe's reconstruction settings.
        seed: seeds the batch and drop samples.
        batch_size: forward batch size of the before/after measurements.
    """
    t0 = time.perf_counter()
    rows_q, x_f = UnitRows(inputs, name), UnitRows(float_inputs, name).x
    return _reconstruct(name, unit, unit_ops, rows_q, x_f, torch.cat(float_outputs), spec, seed, batch_size, t0)


def _reconstruct(name, unit, unit_ops, rows_q: UnitRows, x_f, target, spec, seed, batch_size, t0) -> ReconstructionResult:
    x_q = rows_q.x
    before = _loss(unit, rows_q, target, batch_size)
    intervals = _learned_intervals(unit_ops) if spec.lr_scale > 0 else []
    saved = {k: v.clone() for k, v in unit.state_dict().items()}
    rounding: dict[str, AdaRoundWeight] = {}
    if spec.learn_rounding:
        for n, op in unit_ops.items():
            qw = op.quantizers()[1]
            if op.has_weight and type(qw) is UniformQuantizer and qw.enabled and getattr(op, "weight_quantizer", None) is qw:
                rounding[n] = AdaRoundWeight(qw, op.weight, learn_scale=spec.lr_weight_scale > 0)
    if spec.iters == 0 or not (rounding or intervals):
        return ReconstructionResult(name, before, before, 0, time.perf_counter() - t0)
    flags = {p: p.requires_grad for p in unit.parameters()}
    groups = [{"params": [r.v for r in rounding.values()], "lr": spec.lr_rounding}] if rounding else []
    if rounding and spec.lr_weight_scale > 0:
        groups.append({"params": [r.log_gain for r in rounding.values()], "lr": spec.lr_weight_scale})
    groups += [{"params": [q.scale], "lr": spec.lr_scale * float(q.scale)} for q in intervals]
    gen = torch.Generator().manual_seed(seed)
    # the rows are this rank's block of the images (all of them in one process): minibatches are drawn
    # over every rank's rows alike, each rank runs the ones it holds
    n, start_reg = shard_count(x_q.shape[0]), int(spec.warmup * spec.iters)
    mine = shard_range(n)
    if len(mine) != x_q.shape[0]:
        raise VitqError(f"reconstruction of {name}: {x_q.shape[0]} rows on this rank, expected {len(mine)} of {n}")
    trainable = [p for g in groups for p in g["params"]]
    try:
        for p in unit.parameters():
            p.requires_grad_(False)
        for n_op, r in rounding.items():
            unit_ops[n_op].weight_quantizer = r
        for q in intervals:
            q.scale.requires_grad_(True)
        opt = torch.optim.Adam(groups)
        with torch.enable_grad():
            for it in range(spec.iters):
                idx = torch.randint(n, (min(spec.batch_size, n),), generator=gen)
                held = (idx >= mine.start) & (idx < mine.stop)
                local = idx[held] - mine.start
                x = x_q[local]
                if spec.drop_prob > 0:
                    drop = torch.rand((idx.numel(), *x_q.shape[1:]), generator=gen)[held] < spec.drop_prob
                    x = torch.where(drop, x_f[local], x)
                loss = _error(_tensor_out(rows_q(unit, local, x)), target[local], idx.numel()) if local.numel() else None
                if rounding and it >= start_reg and rank() == 0:  # once over the ranks
                    t = (it - start_reg) / max(1, spec.iters - start_reg)
                    beta = spec.beta[1] + (spec.beta[0] - spec.beta[1]) * (1 - t)
                    reg = spec.round_weight * sum(r.regularizer(beta) for r in rounding.values())
                    loss = reg if loss is None else loss + reg
                opt.zero_grad(set_to_none=True)
                if loss is not None:
                    loss.backward()
                for p in trainable:  # a rank without rows in this minibatch adds zeros
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                all_reduce_grads(trainable)
                opt.step()
                with torch.no_grad():
                    for q in intervals:
                        q.scale.clamp_(min=torch.finfo(torch.float32).tiny * 1e6)
    finally:
        for q in intervals:
            q.scale.requires_grad_(False)
        with torch.no_grad():
            for n_op, r in rounding.items():
                op = unit_ops[n_op]
                op.weight_quantizer = r.quantizer
                op.weight.copy_(r.hard_weight(op.weight))
                r.commit_scale()
        for p, f in flags.items():
            p.requires_grad_(f)
    after = _loss(unit, rows_q, target, batch_size)
    kept = after <= before
    if not kept:  # the search's state was better on the calibration set: put it back
        unit.load_state_dict(saved)
        log.info("reconstruction of %s raised its output error (%.4g -> %.4g); kept the searched state",
                 name, before, after)
    result = ReconstructionResult(name, before, after if kept else before, spec.iters, time.perf_counter() - t0,
                                  weights=len(rounding), intervals=len(intervals), kept=kept)
    log.debug("reconstructed %s in %.1fs: output error %.4g -> %.4g", name, result.seconds, before, after)
    return result

"""Calibration engine: the method's interval search, unit by unit, op by op.

Units (patch embedding, each transformer block, optionally the head) are calibrated in forward order.
Each unit is fed the outputs of the already-quantized units before it, so errors are seen where they
accumulate, and only one unit's inputs are held in memory. Inside a unit the ops are calibrated in
the order the forward calls them: op k is calibrated on inputs produced with ops 1..k-1 quantized,
against its own float output on those same inputs (O_l = X_l W_l of Liu et al.).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from vitq.calibration.capture import capture_unit_inputs, check_finite, collect_op_io, run_unit
from vitq.calibration.checkpoint import (
    CalibrationCheckpoint,
    CalibrationState,
    fingerprint,
    module_attrs,
    restore_module_attrs,
)
from vitq.calibration.gptq import apply_gptq
from vitq.calibration.preparation import UnitPreparation
from vitq.calibration.reconstruction import FloatReference, reconstruct_unit
from vitq.calibration.search import OpCalibrationResult, OpData, percentile_scale, search_op
from vitq.config import QuantConfig
from vitq.distributed import is_distributed, shard_batches, shard_count, sharded
from vitq.errors import CalibrationDataError, ConfigError, VitqError
from vitq.info import get_quant_info
from vitq.models.base import adapter_by_name
from vitq.nn.qops import QuantOp, quant_ops
from vitq.quantizers.base import SearchableQuantizer
from vitq.recipes import SearchSpec, get_recipe

log = logging.getLogger(__name__)

#: below this many calibration images block reconstruction gains little (a warning says so)
RECON_MIN_IMAGES = 256


@dataclass
class CalibrationReport:
    method: str
    num_images: int
    seconds: float = 0.0
    ops: list[OpCalibrationResult] = field(default_factory=list)
    #: block reconstruction per unit (recipes with ``reconstruction``): output error before / after
    units: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "num_images": self.num_images,
            "seconds": self.seconds,
            "ops": [vars(o) for o in self.ops],
            "units": list(self.units),
        }


def as_batches(data: torch.Tensor | Iterable, batch_size: int) -> list[torch.Tensor]:
    """Normalise calibration data to a list of image batches ``(B, C, H, W)``.

    Accepts one tensor ``(N, C, H, W)``, or an iterable of tensors or of ``(images, labels)`` tuples.
    """
    if isinstance(data, torch.Tensor):
        tensors = [data]
    else:
        tensors = [d[0] if isinstance(d, (tuple, list)) else d for d in data]
    batches = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise CalibrationDataError(
                f"calibration data must be image tensors (N, C, H, W); got {type(t).__name__} "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else ''}"
            )
        batches.extend(t.split(batch_size))
    if not batches or sum(b.shape[0] for b in batches) == 0:
        raise CalibrationDataError("calibration data is empty: give at least one image")
    for i, b in enumerate(batches):
        check_finite(b, f"calibration batch {i}")
    return batches


def _unit_ops(unit_name: str, ops: dict[str, QuantOp]) -> dict[str, QuantOp]:
    prefix = unit_name + "."
    return {n: op for n, op in ops.items() if n == unit_name or n.startswith(prefix)}


def _is_chained(model: nn.Module, first: str, second: str) -> bool:
    """True when ``second`` directly consumes ``first``'s output: consecutive members of one nn.Sequential."""
    if "." not in first or "." not in second:
        return False
    p1, i1 = first.rsplit(".", 1)
    p2, i2 = second.rsplit(".", 1)
    if p1 != p2 or not (i1.isdigit() and i2.isdigit()) or int(i2) != int(i1) + 1:
        return False
    return isinstance(model.get_submodule(p1), nn.Sequential)


def _chain(model: nn.Module, uname: str, nxt: str, unit: nn.Module, inputs) -> list | None:
    """The next unit's inputs when they are this unit's outputs (consecutive members of an nn.Sequential, each
    called with one tensor and returning one), else ``None``: the next unit's inputs are captured from the model."""
    if not _is_chained(model, uname, nxt) or not all(len(a) == 1 and not k and isinstance(a[0], torch.Tensor)
                                                     for a, k in inputs):
        return None
    outs = run_unit(unit, inputs)
    return [((out,), {}) for out in outs] if all(isinstance(o, torch.Tensor) for o in outs) else None


def _op_call_order(unit: nn.Module, inputs, unit_ops: dict[str, QuantOp]) -> dict[str, int]:
    """How often the unit's forward calls each op, keyed in the order of the first calls."""
    calls: dict[str, int] = {}

    def count(n: str) -> None:
        calls[n] = calls.get(n, 0) + 1

    handles = [op.register_forward_hook(lambda *_, n=n: count(n)) for n, op in unit_ops.items()]
    try:
        args, kwargs = inputs[0]
        unit(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in unit_ops if n not in calls]
    if missing:
        raise VitqError(f"quantized ops {missing} are never called by the forward of their unit; cannot calibrate them")
    return calls


def _collect_op_data(unit: nn.Module, inputs, op: QuantOp, name: str, calls_per_forward: int | None = None) -> OpData:
    store = collect_op_io(unit, inputs, op, calls_per_forward)
    if not store:
        raise VitqError(f"op {name} produced no calibration data")
    a = torch.cat([s[0][0] for s in store])
    target = torch.cat([s[1] for s in store])
    check_finite(a, f"the input of {name}")
    if op.has_weight:
        b, b_is_weight = op.weight.detach(), True
    else:
        b, b_is_weight = torch.cat([s[0][1] for s in store]), False
        check_finite(b, f"the second input of {name}")
    check_finite(target, f"the float output of {name}")
    return OpData(a=a, b=b, target=target, b_is_weight=b_is_weight)


def _init_intervals(op: QuantOp, data: OpData, init: str, percentile: float, gen: torch.Generator,
                    name: str = "?") -> None:
    qa, qb = op.quantizers()
    if init == "lp_percentile":  # RepQ-ViT's range rule, each quantizer's own (no output search needed)
        for q, x, which in ((qa, data.a, "first operand"), (qb, data.b, "second operand")):
            if not hasattr(q, "init_lp"):
                raise ConfigError(f"op {name}: its {which} quantizer {type(q).__name__} has no lp_percentile range "
                                  "rule (RepQ-ViT's: AffineQuantizer, LogSqrt2Quantizer have one); give the op "
                                  "another method or input_quantizer in the plan")
            q.init_lp(x)
    elif any(isinstance(q, SearchableQuantizer) for q in (qa, qb)):  # non-uniform: each knows its own start
        qa.init_max(data.a)
        qb.init_max(data.b)
    elif init == "percentile":
        qa.scale.copy_(percentile_scale(data.a, percentile, qa.qmax, gen))
        if data.b_is_weight:
            qb.init_max(data.b)
        else:
            qb.scale.copy_(percentile_scale(data.b, percentile, qb.qmax, gen))
    else:
        qa.init_max(data.a)
        qb.init_max(data.b)


def op_search_spec(config: QuantConfig, default: SearchSpec, name: str) -> SearchSpec:
    """The interval search of one op: its plan entry's ``method`` recipe's, else the config's recipe's."""
    method = config.plan_entry(name)[1].method
    return default if method is None else get_recipe(method).search


@torch.no_grad()
@sharded()  # in a data-parallel run (torchrun) ``data`` is this rank's shard: statistics combine the ranks
def calibrate(model: nn.Module, data: torch.Tensor | Iterable, config: QuantConfig | None = None, *,
              progress: bool = True,
              on_op_data: Callable[[str, QuantOp, OpData], None] | None = None,
              checkpoint: CalibrationCheckpoint | str | Path | None = None) -> CalibrationReport:
    """Calibrate a model prepared by :func:`vitq.quantize` on unlabelled images, in place.

    Args:
        model: the quantized model (``vitq.quantize(...)``).
        data: calibration images ``(N, C, H, W)`` already preprocessed, or an iterable of batches.
        config: overrides the config given to ``quantize`` (method and search options).
        progress: show a progress bar over units.
        on_op_data: called as ``on_op_data(name, op, data)`` for every op, with the data its search is
            about to see and its intervals initialised (inspection; ``benchmarks/calibration_speed.py``
            runs the fast and reference searches on copies of the op there). It must not modify them.
        checkpoint: a directory (or a :class:`~vitq.calibration.checkpoint.CalibrationCheckpoint`) where the
            state is saved, atomically, after every finished unit. If it holds the state of an interrupted
            calibration of the same model, config and images, the finished units are skipped and the result
            is bit-identical to an uninterrupted run's; otherwise it is ignored (one log line says why).
            Removed after a successful calibration (unless the checkpoint object says ``keep``).
            Not used in a data-parallel run (the ranks' states would have to be saved together).

    In a data-parallel run (``torchrun``, :mod:`vitq.distributed`) every rank calls this with its own shard
    of the images (:func:`vitq.distributed.shard`); the statistics the searches need are combined across
    ranks, so every rank ends with the model one process calibrated on all the images would have.

    Returns:
        A :class:`CalibrationReport` with the objective before/after the search of every op.
    """
    info = get_quant_info(model)
    config = config or info.config
    recipe = config.recipe()
    adapter = adapter_by_name(info.adapter)
    batches = as_batches(data, config.batch_size)
    device = next(model.parameters()).device
    batches = [b.to(device) for b in batches]
    gen = torch.Generator().manual_seed(config.seed)
    ops = quant_ops(model)
    ckpt = CalibrationCheckpoint.of(checkpoint)
    if ckpt is not None and is_distributed():
        log.warning("calibration checkpoint %s not used: a data-parallel run does not resume", ckpt.path)
        ckpt = None
    fp = fingerprint(model, config, batches, info.model_spec) if ckpt is not None else None  # before any change
    searches = {name: op_search_spec(config, recipe.search, name) for name in ops}
    # recipe work before each unit's ops: SQ-b / RepQ folding, Hessian output weights (None for most recipes)
    search_limit = config.search_images
    if search_limit is None and recipe.reconstruction is not None and recipe.reconstruction.iters > 0:
        search_limit = recipe.reconstruction.search_images
    # (the Hessian objective's output gradients on the images the search sees)
    prep = UnitPreparation.build(model, config, recipe, searches,
                                 [a[0] for a, _ in _first_images([((b,), {}) for b in batches], search_limit)],
                                 info.forward)
    if search_limit is not None and is_distributed() and any(s.objective == "hessian" for s in searches.values()):
        raise ConfigError("the Hessian objective with search_images (or a reconstruction recipe) does not run "
                          "data-parallel yet: run it in one process")
    for op in ops.values():
        op.set_enabled(False)
    units = adapter.calibration_units(model)
    claimed = [n for u, _ in units for n in _unit_ops(u, ops)]
    orphans = sorted(set(ops) - set(claimed))
    if orphans:
        raise VitqError(f"quantized ops outside every calibration unit of adapter {adapter.name}: {orphans}")

    was_training = model.training
    model.eval()
    report = CalibrationReport(method=config.method, num_images=shard_count(sum(b.shape[0] for b in batches)))
    unit_names = [u for u, _ in units]
    start, inputs, seconds_before = 0, None, 0.0
    # reconstruction's targets: the float parameters, copied before a search or a resumed state changes them
    float_ref = FloatReference(model) if recipe.reconstruction is not None and recipe.reconstruction.iters > 0 else None
    if float_ref is not None and report.num_images < RECON_MIN_IMAGES:
        log.warning("block reconstruction on %d calibration images has little to learn from (measured on "
                    "fmnist-vit W4A4: -0.1 points on 32 images, +1.25 on 1,024); give it %d or more (--num-calib)",
                    report.num_images, RECON_MIN_IMAGES)
    resumed = ckpt.load(fp, unit_names) if ckpt is not None else None
    if resumed is not None:
        start, inputs, seconds_before = _restore(model, ops, gen, report, resumed)
    t0 = time.perf_counter()
    bar = tqdm(units[start:], desc=f"calibrate {config.method}", unit="unit", disable=not progress,
               initial=start, total=len(units))
    for ui, (uname, unit) in enumerate(bar, start):
        unit_ops = _unit_ops(uname, ops)
        if not unit_ops:  # e.g. a float head: nothing to calibrate, no inputs to capture
            inputs = None
            continue
        if inputs is None:
            inputs = capture_unit_inputs(model, unit, batches, info.forward)
        if prep is not None:
            prep.before_unit(uname, unit, inputs, unit_ops)
        # the search's images: the first ``search_limit`` of all; in a data-parallel run with a limit they
        # are gathered from the ranks and every rank searches them alike (replicated, exact)
        local = search_limit is not None and is_distributed()
        search_inputs = _first_images(shard_batches(inputs) if local else inputs, search_limit)
        with sharded(not local):
            for name, calls in _op_call_order(unit, inputs, unit_ops).items():
                op = unit_ops[name]
                bar.set_postfix_str(name)
                t_op = time.perf_counter()
                op_data = _collect_op_data(unit, search_inputs, op, name, calls)
                if prep is not None:
                    prep.update_op_data(name, op_data)
                spec = searches[name]
                _init_intervals(op, op_data, spec.init, config.percentile, gen, name)
                if prep is not None:  # e.g. RepQ-ViT's per-tensor interval of a reparameterised input
                    prep.after_init(name, op)
                if on_op_data is not None:
                    on_op_data(name, op, op_data)
                if spec.objective is not None:
                    res = search_op(op, name, op_data, spec, num_candidates=config.num_candidates,
                                    max_iters=config.max_iters, tol=config.tol, ranking_gamma=config.ranking_gamma,
                                    ranking_pairs=config.ranking_pairs, ranking_margin=config.ranking_margin,
                                    generator=gen, search=config.search)
                else:
                    res = OpCalibrationResult(name=name, role=op.role)
                if op.has_weight and config.weight_rounding_for(name, recipe) == "gptq":  # on the grid just searched
                    apply_gptq(op, name, op_data, bias_correction=spec.bias_correction)
                qa, qb = op.quantizers()
                res.scales = (qa.scale.flatten().tolist(), qb.scale.flatten().tolist())
                report.ops.append(res)
                op.set_enabled(True)
                log.debug("calibrated %s in %.2fs: loss %s -> %s", name, time.perf_counter() - t_op, res.loss_start, res.loss_end)
                del op_data
        if float_ref is not None:
            bar.set_postfix_str(f"{uname} (reconstruction)")
            float_inputs, float_outputs = float_ref.unit_io(model, unit, batches, info.forward)
            res = reconstruct_unit(uname, unit, unit_ops, inputs, float_inputs, float_outputs, recipe.reconstruction,
                                   seed=config.seed * 1_000_003 + ui, batch_size=config.batch_size)
            report.units.append(vars(res))
        nxt = units[ui + 1][0] if ui + 1 < len(units) else None
        inputs = _chain(model, uname, nxt, unit, inputs) if nxt is not None else None
        if float_ref is not None:
            float_ref.advance(inputs is not None, float_outputs)
            del float_inputs, float_outputs
        if ckpt is not None:
            done = ui + 1  # and the units after it with nothing to calibrate (a float head)
            while done < len(units) and not _unit_ops(units[done][0], ops):
                done += 1
            ckpt.save(fp, CalibrationState(
                units_done=done, model_state=model.state_dict(), attrs=module_attrs(ops), report_ops=report.ops,
                rng=gen.get_state(), seconds=seconds_before + time.perf_counter() - t0, unit_names=unit_names,
                next_inputs=_chained_tensors(inputs) if done == ui + 1 else None))
    report.seconds = seconds_before + time.perf_counter() - t0
    info.calibrated = True
    info.calibration = {"method": config.method, "num_images": report.num_images, "seconds": round(report.seconds, 3)}
    model.train(was_training)
    if ckpt is not None and not ckpt.keep:
        ckpt.remove()
    log.info("calibrated %d ops with %s on %d images in %.1fs", len(report.ops), config.method,
             report.num_images, report.seconds)
    return report


def _first_images(inputs: list, limit: int | None) -> list:
    """The first ``limit`` images of ``inputs`` (per-batch ``(args, kwargs)``; all of them for ``None``): whole
    batches, then the first rows of the batch that crosses the limit (tensors whose first dimension is
    the batch's are sliced)."""
    if limit is None:
        return inputs
    out, n = [], 0
    for args, kwargs in inputs:
        if n >= limit:
            break
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        b = first.shape[0] if first is not None else 1
        if first is not None and n + b > limit:
            k = limit - n

            def cut(x, b=b, k=k):
                return x[:k] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == b else x

            args, kwargs = tuple(cut(a) for a in args), {key: cut(v) for key, v in kwargs.items()}
            b = k
        out.append((args, kwargs))
        n += b
    return out


def _chained_tensors(inputs) -> list[torch.Tensor] | None:
    """The next unit's inputs when they are the finished unit's outputs, one tensor per batch (else
    ``None``: the next unit's inputs are captured from the model)."""
    if inputs is None or not all(len(a) == 1 and not k and isinstance(a[0], torch.Tensor) for a, k in inputs):
        return None
    return [a[0] for a, _ in inputs]


def _restore(model: nn.Module, ops: dict[str, QuantOp], gen: torch.Generator, report: CalibrationReport,
             state: CalibrationState) -> tuple[int, list | None, float]:
    """Put a checkpoint's state into the model, the generator and the report; returns the first unit to
    calibrate, its inputs (``None``: capture them) and the calibration seconds so far."""
    model.load_state_dict(state.model_state, strict=True)
    restore_module_attrs(ops, state.attrs)
    gen.set_state(state.rng)
    report.ops = list(state.report_ops)
    device = next(model.parameters()).device
    inputs = None if state.next_inputs is None else [((t.to(device),), {}) for t in state.next_inputs]
    return state.units_done, inputs, state.seconds

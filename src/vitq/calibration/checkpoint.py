"""Calibration checkpoints: an interrupted calibration resumes at its last finished unit.

:func:`vitq.calibrate` with ``checkpoint=PATH`` writes, after every finished unit, everything the rest of
the calibration depends on; run again with the same arguments after a crash, ``kill -9`` or Ctrl-C, it
loads that state, skips the finished units and ends with the same model, bit for bit, as a run that was
never interrupted. A checkpoint of another model, config, calibration set or software version is ignored
(one log line says which differs) and the calibration starts over.

The checkpoint is a directory, replaced as a whole after each unit (:func:`vitq.utils.atomic.atomic_dir`:
a killed write leaves the previous checkpoint intact):

``PATH/checkpoint.json``
    ``format`` (``vitq-calibration-checkpoint``), ``format_version``, ``fingerprint`` (SHA-256 of the
    parts, and the parts: config, model, images, software: vitq's source and torch's version), ``units`` (the unit names in calibration
    order), ``units_done`` (how many are finished), ``module_attrs`` (the plain attributes that are not
    tensors, e.g. each quantizer's ``enabled`` flag and the two-region quantizers' ``_searched``, of every
    quantized op and its quantizers), ``report_ops`` (the report rows so far), ``seconds`` (calibration
    time so far), ``next_inputs`` (how many batches of the next unit's inputs are stored) and ``tensors``
    (the SHA-256 of the tensor file).
``PATH/tensors.safetensors``
    ``model.<key>``: the model's whole state dict (weights, biases after bias correction and smoothing
    folds, every quantizer buffer); ``rng``: the state of the generator that samples the ranking pairs;
    ``input.<i>``: the next unit's inputs when it is fed the finished unit's outputs (so a resumed run
    continues from exactly the tensors an uninterrupted one would hand on).

Nothing is unpickled: JSON and safetensors only. The name beside a command's output is
:func:`checkpoint_path_for` (``.NAME.resume``), which :func:`vitq.utils.atomic.remove_stale_temps` never
takes for a temporary (those are ``.NAME.tmp-...`` / ``.NAME.old-...``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from vitq.calibration.search import OpCalibrationResult
from vitq.utils.atomic import atomic_dir, remove_stale_temps

log = logging.getLogger(__name__)

FORMAT = "vitq-calibration-checkpoint"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
TENSORS_FILE = "tensors.safetensors"
#: what each fingerprint part covers, as the "ignored" log line names it
PART_NAMES = {"config": "the config differs", "model": "the model differs",
              "images": "the calibration images differ",
              "software": "the vitq / torch version (or vitq's source) differs"}
_PLAIN = (bool, int, float, str, type(None))
_MODULE_BASE_ATTRS = frozenset(vars(nn.Module()))


def checkpoint_path_for(output: str | Path) -> Path:
    """The checkpoint beside an output directory: ``PARENT/.NAME.resume`` (neither in the output nor in
    the calibration folder)."""
    output = Path(output)
    return output.parent / f".{output.name}.resume"


# -- fingerprint ---------------------------------------------------------------------------------------------

def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def fingerprint(model: nn.Module, config, batches: Sequence[torch.Tensor], model_spec=None) -> dict[str, str]:
    """SHA-256 of what a calibration's result depends on, by part: ``config`` (its JSON), ``model`` (the
    spec, every module's class and the state dict, taken before calibration changes it), ``images`` (the
    calibration batches' bytes), ``software`` (vitq's source files, so also its version; torch's version;
    ``VITQ_COMPILE`` and ``VITQ_FUSED_MIN_NUMEL``, which choose between kernels that round differently)."""
    parts = {}
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    parts["config"] = h.hexdigest()
    h = hashlib.sha256(json.dumps(model_spec, sort_keys=True, default=str).encode())
    for name, m in model.named_modules():
        h.update(f"{name}:{type(m).__module__}.{type(m).__qualname__};".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _hash_tensor(h, t)
    parts["model"] = h.hexdigest()
    h = hashlib.sha256()
    for b in batches:
        _hash_tensor(h, b)
    parts["images"] = h.hexdigest()
    env = [os.environ.get(k) for k in ("VITQ_COMPILE", "VITQ_FUSED_MIN_NUMEL")]  # which kernels run
    h = hashlib.sha256(json.dumps([torch.__version__, *env]).encode())
    h.update(_source_digest().encode())
    parts["software"] = h.hexdigest()
    return parts


def _source_digest() -> str:
    """SHA-256 of vitq's own ``.py`` files (names and bytes): a changed vitq computes other numbers."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# -- module attributes that are not tensors -------------------------------------------------------------------

def module_attrs(ops: dict[str, nn.Module]) -> dict[str, dict]:
    """The plain (bool / int / float / str / None) instance attributes of every op and module inside it,
    beyond what every ``nn.Module`` has: e.g. each quantizer's ``enabled``, the two-region quantizers'
    ``_searched``. Keyed by qualified module name."""
    out = {}
    for name, op in ops.items():
        for sub, m in op.named_modules():
            attrs = {k: v for k, v in vars(m).items() if k not in _MODULE_BASE_ATTRS and isinstance(v, _PLAIN)}
            if attrs:
                out[f"{name}.{sub}" if sub else name] = attrs
    return out


def restore_module_attrs(ops: dict[str, nn.Module], attrs: dict[str, dict]) -> None:
    mods = {f"{name}.{sub}" if sub else name: m for name, op in ops.items() for sub, m in op.named_modules()}
    for name, values in attrs.items():
        for k, v in values.items():
            setattr(mods[name], k, v)


# -- the checkpoint --------------------------------------------------------------------------------------------

@dataclass
class CalibrationState:
    """What a calibration resumes from: ``units_done`` finished units and the state they left."""

    units_done: int
    model_state: dict[str, torch.Tensor]
    attrs: dict[str, dict]
    report_ops: list[OpCalibrationResult]
    rng: torch.Tensor
    seconds: float = 0.0
    next_inputs: list[torch.Tensor] | None = None
    unit_names: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class CalibrationCheckpoint:
    """A checkpoint directory for :func:`vitq.calibrate` (``checkpoint=`` takes this or a path).

    Args:
        path: the checkpoint directory (created by the first finished unit).
        resume: load a matching checkpoint (``False``: start over, still writing checkpoints).
        keep: leave the final checkpoint after a successful calibration (the caller removes it with
            :meth:`remove` once the result is saved, so a crash in between does not cost the calibration).
    """

    def __init__(self, path: str | Path, *, resume: bool = True, keep: bool = False):
        self.path, self.resume, self.keep = Path(path), resume, keep

    @classmethod
    def of(cls, checkpoint: CalibrationCheckpoint | str | Path | None) -> CalibrationCheckpoint | None:
        if checkpoint is None or isinstance(checkpoint, CalibrationCheckpoint):
            return checkpoint
        return cls(checkpoint)

    def exists(self) -> bool:
        return (self.path / META_FILE).is_file()

    def load(self, fp: dict[str, str], unit_names: list[str]) -> CalibrationState | None:
        """The saved state if it matches ``fp`` and the units; else ``None`` with one log line saying why."""
        remove_stale_temps(self.path)  # puts back a checkpoint moved aside by a write killed mid-swap
        if not self.exists():
            return None
        if not self.resume:
            log.info("calibration checkpoint ignored: resuming is off (%s)", self.path)
            return None
        try:
            meta = json.loads((self.path / META_FILE).read_text())
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} v{meta.get('format_version')}")
            saved = meta["fingerprint"]["parts"]
            differ = [PART_NAMES[k] for k in PART_NAMES if saved.get(k) != fp[k]]
            if differ:
                log.info("calibration checkpoint ignored: %s (%s)", "; ".join(differ), self.path)
                return None
            if meta["units"] != unit_names:
                log.info("calibration checkpoint ignored: the calibration units differ (%s)", self.path)
                return None
            if _sha256(self.path / TENSORS_FILE) != meta["tensors"]:
                raise ValueError(f"{TENSORS_FILE} does not match its recorded SHA-256")
            tensors = load_file(str(self.path / TENSORS_FILE))
            state = CalibrationState(
                units_done=int(meta["units_done"]),
                model_state={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                attrs=meta["module_attrs"],
                report_ops=[OpCalibrationResult(**{**r, "scales": tuple(r["scales"])}) for r in meta["report_ops"]],
                rng=tensors["rng"], seconds=float(meta["seconds"]), unit_names=unit_names,
                next_inputs=None if meta["next_inputs"] is None else [tensors[f"input.{i}"]
                                                                       for i in range(meta["next_inputs"])],
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("calibration checkpoint ignored: unreadable (%s: %s)", self.path, str(e).splitlines()[0][:200])
            return None
        log.info("resuming calibration: %d of %d units done (from %s)", state.units_done, len(unit_names), self.path)
        return state

    def save(self, fp: dict[str, str], state: CalibrationState) -> None:
        """Replace the checkpoint with ``state`` (atomically: whole or not at all)."""
        tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in state.model_state.items()}
        tensors["rng"] = state.rng.clone()
        for i, t in enumerate(state.next_inputs or []):
            tensors[f"input.{i}"] = t.detach().cpu().contiguous()
        with atomic_dir(self.path) as tmp:
            save_file(tensors, str(tmp / TENSORS_FILE))
            meta = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "fingerprint": {"sha256": hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest(),
                                "parts": fp},
                "units": state.unit_names, "units_done": state.units_done, "module_attrs": state.attrs,
                "report_ops": [vars(r) for r in state.report_ops], "seconds": state.seconds,
                "next_inputs": None if state.next_inputs is None else len(state.next_inputs),
                "tensors": _sha256(tmp / TENSORS_FILE),
            }
            # Python's json: report losses may be inf / NaN, and floats round-trip exactly
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

    def remove(self) -> None:
        """Delete the checkpoint (and stale temporaries of killed writes to it)."""
        remove_stale_temps(self.path)
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.exists() or self.path.is_symlink():
            self.path.unlink(missing_ok=True)

"""Save and load quantized models: ``model.safetensors`` (tensors, including every interval buffer)
plus ``vitq.json`` (the model's :class:`~vitq.info.QuantInfo` metadata: architecture spec, config,
state; and per-op bits and intervals). Loading rebuilds the architecture from the spec, re-applies
:func:`vitq.quantize` and loads the tensors; nothing is unpickled. Directories are written atomically.

Format versions: 2 is written; 1 (vitq 0.1.0 before the recipe registry: no ``calibration`` record,
config version 1) is read (``tests/fixtures/saved_v1``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_model, save_model

import vitq
from vitq.config import QuantConfig
from vitq.errors import QuantizedModelFormatError
from vitq.info import get_quant_info
from vitq.lifecycle import quantize
from vitq.nn.qops import quant_ops
from vitq.utils.atomic import atomic_dir

log = logging.getLogger(__name__)

FORMAT = "vitq-quantized"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "vitq.json"


def quant_params(model: nn.Module) -> dict:
    """Per-op bits and intervals, for humans and for checking a load."""
    ops = {}
    for name, op in quant_ops(model).items():
        qa, qb = op.quantizers()
        ops[name] = {
            "role": op.role,
            "a_bits": qa.bits,
            "b_bits": qb.bits,
            "b_is_weight": op.has_weight,
            "enabled": op.quant_enabled,
            "a_scale": qa.scale.flatten().tolist(),
            "b_scale": qb.scale.flatten().tolist(),
        }
    return ops


def quantized_meta(model: nn.Module, extra: dict | None = None, fmt: str = FORMAT,
                   fmt_version: int = FORMAT_VERSION) -> dict:
    """What ``vitq.json`` records: format, architecture spec, config, data config, state and per-op bits."""
    return {
        "format": fmt,
        "format_version": fmt_version,
        "vitq_version": vitq.__version__,
        **get_quant_info(model).to_meta(),
        "ops": quant_params(model),
        "extra": extra or {},
    }


def save_quantized(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write a quantized model to the directory ``path`` (replaced atomically if it exists)."""
    meta = quantized_meta(model, extra)
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    log.info("saved quantized model to %s", path)
    return Path(path)


def read_meta(path: str | Path, fmt: str = FORMAT, fmt_versions: tuple[int, ...] = READABLE_FORMAT_VERSIONS,
              weights_file: str = WEIGHTS_FILE) -> dict:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file() or not (path / weights_file).is_file():
        raise QuantizedModelFormatError(f"{path} is not a saved vitq model (needs {META_FILE} and {weights_file})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise QuantizedModelFormatError(f"{meta_file} is not valid JSON: {e}") from e
    if meta.get("format") != fmt or meta.get("format_version") not in fmt_versions:
        raise QuantizedModelFormatError(
            f"{meta_file}: format {meta.get('format')!r} v{meta.get('format_version')} is not {fmt} "
            f"v{' or v'.join(map(str, fmt_versions))}"
        )
    return meta


def load_quantized(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save_quantized`.

    Args:
        path: the saved directory.
        model: a float model of the same architecture to quantize and fill; by default it is rebuilt
            from the saved spec (``timm:``, ``hf:`` or ``vitq:``) with random init, then overwritten.
    """
    path = Path(path)
    meta = read_meta(path)
    qmodel = rebuild_quantized(meta, path, model)
    missing, unexpected = load_model(qmodel, str(path / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise QuantizedModelFormatError(
            f"{path}/{WEIGHTS_FILE} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return finish_load(qmodel, meta)


def rebuild_quantized(meta: dict, path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The quantized architecture ``meta`` describes, tensors not loaded yet: the float model rebuilt from
    the saved spec (or ``model``), quantized with the saved config, each op at its saved bits."""
    from vitq.models.loading import float_model_from_spec

    if model is None:
        spec = meta.get("model_spec")
        if not spec:
            raise QuantizedModelFormatError(
                f"{path} records no model spec (it was quantized from a custom module): pass model=<float model>"
            )
        model = float_model_from_spec(spec, weights=False)  # the saved tensors are loaded next
    qmodel = quantize(model, QuantConfig.from_dict(meta["config"]), inplace=True)
    ops = quant_ops(qmodel)
    if set(ops) != set(meta["ops"]):
        raise QuantizedModelFormatError(
            f"{path}: the rebuilt model's quantized ops differ from the saved ones "
            f"(missing {sorted(set(meta['ops']) - set(ops))[:5]}, extra {sorted(set(ops) - set(meta['ops']))[:5]})"
        )
    for name, op in ops.items():
        op.set_bits(meta["ops"][name]["a_bits"], meta["ops"][name]["b_bits"])
    return qmodel


def finish_load(qmodel: nn.Module, meta: dict) -> nn.Module:
    """After the tensors are loaded: each op's enabled/frozen state and the model's QuantInfo from ``meta``."""
    ops = quant_ops(qmodel)
    for name, op in ops.items():
        op.set_enabled(meta["ops"][name]["enabled"])
        op.weight_frozen = bool(meta["frozen"]) and op.has_weight
    get_quant_info(qmodel).update_from_meta(meta)
    qmodel.eval()
    return qmodel

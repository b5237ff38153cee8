"""What several commands share: the default model and data sets, the model and quantization flags, and
turning them into a float model and a :class:`~vitq.config.QuantConfig`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vitq.errors import VitqError

log = logging.getLogger("vitq")

DEFAULT_MODEL = "vitq:fmnist-vit"
DEFAULT_CALIB = "fmnist-subset:calib"
DEFAULT_TEST = "fmnist-subset:test"


def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--model``, ``--checkpoint``, ``--model-arg``."""
    p.add_argument("--model", default=None if required else DEFAULT_MODEL,
                   help="timm:NAME, hf:DIR or vitq:NAME (default: %(default)s)")
    p.add_argument("--checkpoint", help="local weights for the architecture (safetensors or torch state dict)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture argument, repeatable, VALUE parsed as JSON (e.g. img_size=112 num_classes=10)")


def add_quant_args(p: argparse.ArgumentParser) -> None:
    """The QuantConfig flags (read by :func:`config_from_args`), the extended recipes' flags included."""
    # Defaults are None so that only flags given on the command line override --config; unset values
    # fall back to the config file, then to QuantConfig's defaults (W8A8, liu2021, C=100, 20 rounds).
    from vitq.cli.options import add_extended_args
    from vitq.recipes import recipe_names

    p.add_argument("--bits", type=int, help="weight and activation bits, 2..16 (default 8)")
    p.add_argument("--w-bits", type=int, help="weight bits (overrides --bits)")
    p.add_argument("--a-bits", type=int, help="activation bits (overrides --bits)")
    p.add_argument("--method", choices=recipe_names(), help="calibration method, a registered recipe (default liu2021; see vitq.recipes)")
    p.add_argument("--num-calib", type=int, default=32, help="calibration images (default 32)")
    p.add_argument("--num-candidates", type=int, help="C, interval candidates (default 100)")
    p.add_argument("--max-iters", type=int, help="alternating search rounds at most (default 20)")
    p.add_argument("--per-channel", action="store_true", default=None, help="per-output-channel weight intervals")
    p.add_argument("--quantize-head", action="store_true", default=None, help="quantize the classifier head too")
    p.add_argument("--config", help="a QuantConfig JSON file; flags given explicitly override it")
    p.add_argument("--seed", type=int, default=0)
    add_extended_args(p)  # --sqb, --no-sqb-shift, --smoothquant-alpha, --sqb-proj, --optm, --optm-softmax, --fully-quantized, --weight-rounding


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
    from vitq.models.loading import create_model

    model = create_model(args.model, checkpoint=args.checkpoint, **model_kwargs(args.model_arg))
    if args.checkpoint:
        model.vitq_model_spec["checkpoint"] = str(Path(args.checkpoint).resolve())
    return model


def default_calib(args: argparse.Namespace) -> str | None:
    """``--calib``, else the built-in calibration set for the default model, else None."""
    return args.calib or (DEFAULT_CALIB if args.model == DEFAULT_MODEL else None)


def config_from_args(args: argparse.Namespace):
    """The QuantConfig of ``--config`` (if given) with the flags given explicitly applied over it."""
    from vitq.cli.options import extended_config_fields
    from vitq.config import QuantConfig

    base = QuantConfig.from_json(args.config).to_dict() if args.config else {}
    given = {
        "w_bits": args.w_bits if args.w_bits is not None else args.bits,
        "a_bits": args.a_bits if args.a_bits is not None else args.bits,
        "method": args.method,
        "num_candidates": args.num_candidates,
        "max_iters": args.max_iters,
        "per_channel_weights": args.per_channel,
        "quantize_head": args.quantize_head,
        "seed": args.seed,
        **extended_config_fields(args),
    }
    return QuantConfig.from_dict({**base, **{k: v for k, v in given.items() if v is not None}})

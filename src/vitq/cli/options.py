"""The MPTQ-ViT flags, ``--weight-rounding`` and ``--rotation``: command-line switches of the extended recipes (they override the recipe's choices, :meth:`vitq.recipes.Recipe.resolve`), for
``vitq quantize`` and ``vitq export`` (QuantConfig fields) and ``vitq bench`` (overrides of every run).

Each flag defaults to ``None`` so that only flags given explicitly override a ``--config`` file.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from vitq.cli.argtypes import nonnegative_float, unit_float
from vitq.errors import ConfigError
from vitq.recipes import WEIGHT_ROUNDINGS
from vitq.recipes.base import CONFIG_ROTATIONS, RECON_SETTINGS


def add_extended_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MPTQ-ViT parts (compose with any --method)")
    g.add_argument("--sqb", action="store_true", default=None,
                   help="SQ-b: fold a per-channel shift + SmoothQuant scale of LayerNorm outputs into the model")
    g.add_argument("--no-sqb-shift", dest="sqb_shift", action="store_false", default=None,
                   help="with --sqb (or --method mptq): no shift, i.e. plain SmoothQuant")
    g.add_argument("--smoothquant-alpha", type=unit_float, default=None, help="fixed alpha in [0, 1] (default: searched)")
    g.add_argument("--sqb-proj", action="store_true", default=None,
                   help="also smooth the attention output projection through the V rows of qkv")
    g.add_argument("--optm", action="store_true", default=None, help="OPT-m two-region quantizer on post-GELU inputs")
    g.add_argument("--optm-softmax", action="store_true", default=None,
                   help="OPT-m's two-region quantizer on post-softmax attention maps too")
    g.add_argument("--fully-quantized", action="store_true", default=None,
                   help="also quantize LayerNorm inputs (power-of-two factors) and softmax outputs (log2)")
    g = p.add_argument_group("weight rounding (composes with any --method)")
    g.add_argument("--weight-rounding", choices=WEIGHT_ROUNDINGS, default=None,
                   help="round weights onto the searched grid to nearest or by GPTQ (Frantar et al. 2023) "
                        "(default: the method's; gptq for gptq and liu2021-gptq)")

    g = p.add_argument_group("block reconstruction (BRECQ/QDrop-style, composes with any --method)")
    g.add_argument("--recon-iters", type=int, default=None, metavar="N",
                   help="learn each block's weight rounding and activation intervals for N Adam steps after "
                        "its search; 0 turns a recipe's reconstruction off (default: the method's)")
    g.add_argument("--recon-lr-scale", type=nonnegative_float, default=None, metavar="LR",
                   help="learning rate of the activation intervals, relative to each interval (0 keeps the "
                        "searched ones; default: the method's, 1e-3)")
    g.add_argument("--recon-lr-weight-scale", type=nonnegative_float, default=None, metavar="LR",
                   help="also learn a factor on each weight interval (per output channel) at this learning "
                        "rate (default: the method's, 0: the searched intervals stay)")
    g.add_argument("--recon-drop-prob", type=unit_float, default=None, metavar="P",
                   help="QDrop: feed each input element in float with probability P (0: BRECQ; default: the "
                        "method's, 0.5)")
    g.add_argument("--search-images", type=int, default=None, metavar="N",
                   help="the interval search sees only the first N calibration images (reconstruction sees "
                        "all; default: all)")

    r = p.add_argument_group("rotation (QuaRot-style, compose with any --method without LayerNorm transforms)")
    r.add_argument("--rotation", choices=CONFIG_ROTATIONS, default=None,
                   help="fold the LayerNorms and rotate the residual stream by a randomized Hadamard matrix "
                        "(seeded by --seed) before quantizing; hadamard-online adds an online Hadamard before "
                        "each MLP fc2; none turns off a recipe's rotation (default: the recipe's)")


def extended_config_fields(args: argparse.Namespace) -> dict:
    """The QuantConfig fields given by these flags (``None`` where not given)."""
    return {k: getattr(args, k, None) for k in ("sqb", "sqb_shift", "smoothquant_alpha", "sqb_proj", "optm",
                                                  "optm_softmax", "fully_quantized", "weight_rounding",
                                                  "rotation", "recon_iters",
                                                  *(f"recon_{k}" for k in RECON_SETTINGS), "search_images")}


def check_sqb_shift(args: argparse.Namespace, methods: Iterable[str], sqb: bool | None = None) -> None:
    """``--no-sqb-shift`` only means something with SQ-b: ``--sqb``, or a method whose recipe folds SQ-b in
    (``mptq``, ``mptq-sqb``). Given alone it would be ignored; it is an error naming the flag (the config
    rejects ``sqb_shift=False`` alone too, :meth:`vitq.recipes.Recipe.resolve`)."""
    if getattr(args, "sqb_shift", None) is not False or (args.sqb if sqb is None else sqb):
        return
    from vitq.recipes import RECIPES, get_recipe

    without = [m for m in methods if "sqb" not in get_recipe(m).transforms]
    if without:
        with_sqb = [n for n, r in RECIPES.items() if "sqb" in r.transforms]
        which = f"method {without[0]} does" if len(without) == 1 else f"methods {', '.join(without)} do"
        raise ConfigError(f"--no-sqb-shift applies to SQ-b, which {which} not use: add --sqb, or use a method "
                          f"with SQ-b ({', '.join(with_sqb)})")


def extended_overrides(args: argparse.Namespace) -> dict:
    """Only the fields these flags set: QuantConfig overrides for every run of a benchmark."""
    return {k: v for k, v in extended_config_fields(args).items() if v is not None}

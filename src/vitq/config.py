"""Typed, validated quantization configuration that round-trips to JSON.

:class:`QuantConfig` says what to quantize (bits, granularity, head) and how to calibrate (the method,
a registered :class:`~vitq.recipes.Recipe`, and its search hyper-parameters). Per-op options (a
mixed-precision plan, and any other per-op choice: granularity, quantizer kind, recipe, float) are an
ordered map from op name or ``re:`` regular expression to :class:`OpOptions`, the shape of torchao's
``FqnToConfig``.

JSON versions: 1 (plans set bits only) is read and upgraded; 2 is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vitq.errors import ConfigError
from vitq.quantizers.uniform import check_bits
from vitq.recipes import WEIGHT_ROUNDINGS, Recipe, check_weight_rounding, get_recipe
from vitq.recipes.base import CONFIG_ROTATIONS, RECON_SETTINGS

CONFIG_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: the quantizer kinds a plan entry's ``input_quantizer`` may name, per op role (first operand)
INPUT_QUANTIZERS = {
    "linear": ("uniform", "optm", "ptq4vit"),
    "conv": ("uniform",),
    "attn_scores": ("uniform",),
    "attn_context": ("uniform", "optm", "ptq4vit", "log2", "log_sqrt2"),
}
_ALL_INPUT_QUANTIZERS = tuple(dict.fromkeys(k for ks in INPUT_QUANTIZERS.values() for k in ks))
#: values of ``QuantConfig.rotation`` besides ``None`` (the recipe's choice): ``"none"`` turns it off


@dataclass(frozen=True)
class OpOptions:
    """Per-op options of a plan entry; ``None`` keeps the model-wide value.

    Attributes:
        w_bits: bits of the op's weight (Linear / Conv) or second operand (K of Q·K^T, V of attn·V).
        a_bits: bits of the op's input (first operand).
        per_channel_weights: weight intervals per output channel (True) or per tensor (False).
        input_quantizer: quantizer kind of the first operand (see :data:`INPUT_QUANTIZERS`); overrides
            the recipe's choice for this op.
        method: the registered recipe whose interval search calibrates this op.
        weight_rounding: ``"nearest"`` or ``"gptq"`` (:mod:`vitq.calibration.gptq`) for this op's weight;
            overrides the config's and the recipe's choice.
        enabled: ``False`` leaves the op in float (not quantized, not calibrated).
    """

    w_bits: int | None = None
    a_bits: int | None = None
    per_channel_weights: bool | None = None
    input_quantizer: str | None = None
    method: str | None = None
    weight_rounding: str | None = None
    enabled: bool | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> OpOptions:
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not d or not set(d) <= known:
            raise ConfigError(f"{where}={d!r}: expected a non-empty dict with keys among {sorted(known)}")
        for k in ("w_bits", "a_bits"):
            if d.get(k) is not None:
                check_bits(d[k], f"{where}.{k}")
        for k in ("per_channel_weights", "enabled"):
            if d.get(k) is not None and not isinstance(d[k], bool):
                raise ConfigError(f"{where}.{k}={d[k]!r} must be true or false")
        if d.get("input_quantizer") is not None and d["input_quantizer"] not in _ALL_INPUT_QUANTIZERS:
            raise ConfigError(f"{where}.input_quantizer={d['input_quantizer']!r}: choose one of "
                              f"{', '.join(_ALL_INPUT_QUANTIZERS)}")
        if d.get("method") is not None:
            get_recipe(d["method"])
        if d.get("weight_rounding") is not None:
            check_weight_rounding(d["weight_rounding"], f"{where}.weight_rounding")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class QuantConfig:
    """Everything that decides a quantized model.

    Attributes:
        w_bits: weight bit-width (2..16) of every quantized Linear / Conv.
        a_bits: bit-width of every matmul input: Linear inputs and both operands of Q·K^T and attn·V.
        method: the calibration recipe, a name in :data:`vitq.recipes.RECIPES` (``liu2021``, ``minmax``,
            ``percentile``, ``easyquant``, ``mse``, the ablations ``liu2021-sim``, ``liu2021-sim+rank``,
            ``liu2021-sim+bc``; ``gptq``, ``liu2021-pc``, ``liu2021-gptq``; ``mptq``, ``mptq-sqb``, ``mptq-optm``,
            ``ptq4vit``, ``repq-vit``).
        per_channel_weights: one weight interval per output channel (True) or per tensor (False); ``None``
            takes the recipe's default (per tensor for every recipe of the papers).
        weight_rounding: ``"nearest"`` or ``"gptq"`` (GPTQ's error-feedback rounding on each op's searched
            grid, :mod:`vitq.calibration.gptq`); ``None`` takes the recipe's (``gptq`` for ``gptq`` and
            ``liu2021-gptq``, else ``nearest``).
        quantize_head: also quantize the classification head; ``None`` takes the recipe's choice (float for
            every recipe of the papers, which list W^E and the block weights only; quantized for
            ``repq-vit``, as its authors' code does).
        quantize_backbone: also quantize a detector's CNN backbone (its Convs; DETR). Off by default, as
            Liu et al. quantize DETR's transformer only. No effect on models without a backbone.
        num_candidates: C, the number of interval candidates in [alpha*Delta, beta*Delta] (Liu et al. 3.2).
        alpha, beta: the candidate range; ``None`` takes the method's default (0.5, 1.2 for liu2021).
        max_iters: maximum alternating W/X search rounds (the paper: 20); stops earlier once the
            objective improves by less than ``tol``.
        tol: minimum objective improvement for another round.
        ranking_gamma: gamma, the weight of the ranking loss in Eq. 11.
        ranking_margin: theta of the hinge Phi(m) = (theta - m)_+ in Eq. 10, relative to the mean
            absolute score difference of the sampled pairs.
        ranking_pairs: key pairs (p, q) sampled per attention row for Eq. 10 (0 = all pairs).
        percentile: the percentile of |x| used by the ``percentile`` method, in (0, 100].
        search: ``"fast"`` (moments for weights, coarse-to-fine over the grid for inputs; see
            :mod:`vitq.calibration.search.fast`) or ``"reference"`` (exhaustive, the straightforward search).
        batch_size: calibration forward batch size.
        seed: seeds the calibration image sample and the ranking pairs.
        plan: per-op options, ``{name or "re:regex": {"w_bits": b, "a_bits": b, ...}}`` (keys of
            :class:`OpOptions`); the first matching entry wins.
        sqb: SQ-b (MPTQ-ViT): fold a per-channel shift and SmoothQuant scale of every LayerNorm output
            into the LayerNorm and the Linears it feeds (see :mod:`vitq.transforms.smoothing`).
        sqb_shift: with ``sqb``, include the shift (bias term); ``False`` is plain SmoothQuant.
        smoothquant_alpha: SQ-b / SmoothQuant migration strength in [0, 1]; ``None`` searches it.
        sqb_proj: also smooth the attention output projection through the V rows of qkv.
        optm: OPT-m two-region quantizer (power-of-two ratio searched) on post-GELU activations.
        optm_softmax: OPT-m's two-region search on post-softmax attention maps too.
        fully_quantized: also quantize LayerNorm inputs (power-of-two factors) and softmax outputs
            (log2), as FQ-ViT; off by default. The flags override the recipe's choices (:meth:`vitq.recipes.Recipe.resolve`).
        rotation: fold the LayerNorms and rotate the residual stream before quantizing
            (:mod:`vitq.transforms.rotation`): ``"hadamard"``, ``"hadamard-online"`` (plus an online Hadamard
            before each MLP's fc2) or ``"none"``; ``None`` takes the recipe's choice (``rtn-rot``,
            ``liu2021-rot``: hadamard). Seeded by ``seed``.
        recon_iters: block reconstruction steps per unit (:mod:`vitq.calibration.reconstruction`); ``0``
            turns a recipe's reconstruction off, ``None`` takes the recipe's, another value adds it (with
            the default settings of :class:`vitq.recipes.Reconstruction`) to any recipe.
        recon_lr_scale, recon_lr_weight_scale, recon_drop_prob: override those settings of the
            reconstruction (:class:`vitq.recipes.Reconstruction`: the activation intervals' learning rate,
            that of a learned factor on each weight interval, QDrop's probability); ``None`` keeps the
            recipe's. Setting one where no reconstruction runs is an error.
        search_images: the interval search (and GPTQ) sees only the first this many calibration images;
            block reconstruction and the LayerNorm
            transforms see them all. ``None``: all. Reconstruction wants hundreds to thousands of
            images, the search a few dozen.
    """

    w_bits: int = 8
    a_bits: int = 8
    method: str = "liu2021"
    per_channel_weights: bool | None = None
    quantize_head: bool | None = None
    quantize_backbone: bool = False
    num_candidates: int = 100
    alpha: float | None = None
    beta: float | None = None
    max_iters: int = 20
    tol: float = 1e-6
    ranking_gamma: float = 1.0
    ranking_margin: float = 0.0
    ranking_pairs: int = 64
    percentile: float = 99.99
    search: str = "fast"
    batch_size: int = 32
    seed: int = 0
    sqb: bool = False
    sqb_shift: bool = True
    smoothquant_alpha: float | None = None
    sqb_proj: bool = False
    optm: bool = False
    optm_softmax: bool = False
    fully_quantized: bool = False
    weight_rounding: str | None = None
    rotation: str | None = None
    recon_iters: int | None = None
    recon_lr_scale: float | None = None
    recon_lr_weight_scale: float | None = None
    recon_drop_prob: float | None = None
    search_images: int | None = None
    plan: dict[str, dict] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        recipe = get_recipe(self.method)
        if not isinstance(self.num_candidates, int) or self.num_candidates < 1:
            raise ConfigError(f"num_candidates={self.num_candidates!r} must be a positive integer")
        if not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ConfigError(f"max_iters={self.max_iters!r} must be a positive integer")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"{name}={v!r} must be a positive number or null")
        if self.alpha is not None and self.beta is not None and self.alpha > self.beta:
            raise ConfigError(f"alpha={self.alpha} must not exceed beta={self.beta}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile={self.percentile!r} must lie in (0, 100]")
        if self.ranking_gamma < 0 or self.ranking_pairs < 0:
            raise ConfigError("ranking_gamma and ranking_pairs must be >= 0")
        if self.search not in ("fast", "reference"):
            raise ConfigError(f"search={self.search!r}: choose 'fast' or 'reference'")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} must be a positive integer")
        if self.per_channel_weights is not None and not isinstance(self.per_channel_weights, bool):
            raise ConfigError(f"per_channel_weights={self.per_channel_weights!r} must be true, false or null")
        if self.weight_rounding is not None and self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ConfigError(f"weight_rounding={self.weight_rounding!r}: choose one of "
                              f"{', '.join(WEIGHT_ROUNDINGS)} or null (the recipe's)")
        if self.quantize_head is not None and not isinstance(self.quantize_head, bool):
            raise ConfigError(f"quantize_head={self.quantize_head!r} must be true, false or null (the recipe's)")
        for name in ("quantize_backbone", "sqb", "sqb_shift", "sqb_proj", "optm", "optm_softmax", "fully_quantized"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        a = self.smoothquant_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1):
            raise ConfigError(f"smoothquant_alpha={a!r} must be a number in [0, 1] or null (search it)")
        if self.rotation is not None and self.rotation not in CONFIG_ROTATIONS:
            raise ConfigError(f"rotation={self.rotation!r}: choose one of {', '.join(CONFIG_ROTATIONS)} or null "
                              "(the recipe's choice)")
        if self.recon_iters is not None and (isinstance(self.recon_iters, bool) or not isinstance(self.recon_iters, int)
                                             or self.recon_iters < 0):
            raise ConfigError(f"recon_iters={self.recon_iters!r} must be an integer >= 0 or null (the recipe's)")
        for k in RECON_SETTINGS:
            v = getattr(self, f"recon_{k}")
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf
                                  or (k == "drop_prob" and v > 1)):
                raise ConfigError(f"recon_{k}={v!r} must be a number {'in [0, 1]' if k == 'drop_prob' else '>= 0'} "
                                  "or null (the recipe's)")
        if self.search_images is not None and (isinstance(self.search_images, bool)
                                               or not isinstance(self.search_images, int) or self.search_images < 1):
            raise ConfigError(f"search_images={self.search_images!r} must be a positive integer or null (all images)")
        recipe.resolve(self)  # flag / recipe conflicts
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"config version {self.version} is not supported (this vitq writes {CONFIG_VERSION} "
                              f"and reads {', '.join(map(str, READABLE_VERSIONS))})")
        if not isinstance(self.plan, dict):
            raise ConfigError(f"plan={self.plan!r} must be a dict from op name or 're:regex' to options")
        self._plan = {key: OpOptions.from_dict(opts, f"plan[{key!r}]") for key, opts in self.plan.items()}
        for key in self.plan:
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as e:
                    raise ConfigError(f"plan key {key!r} is not a valid regular expression: {e}") from e

    # -- the recipe and per-op options ----------------------------------------------------------------
    def recipe(self) -> Recipe:
        """The effective recipe: ``method``'s registered recipe with this config's flags applied."""
        return get_recipe(self.method).resolve(self)

    def plan_entry(self, op_name: str) -> tuple[str | None, OpOptions]:
        """The first plan key matching the op's qualified name and its options (``(None, OpOptions())``)."""
        for key, opts in self._plan.items():
            if re.fullmatch(key[3:], op_name) if key.startswith("re:") else key == op_name:
                return key, opts
        return None, OpOptions()

    def bits_for(self, op_name: str) -> tuple[int, int]:
        """``(w_bits, a_bits)`` for the op with this qualified name: the first matching plan entry, else uniform."""
        opts = self.plan_entry(op_name)[1]
        return (self.w_bits if opts.w_bits is None else opts.w_bits,
                self.a_bits if opts.a_bits is None else opts.a_bits)

    def per_channel_for(self, op_name: str, recipe: Recipe | None = None) -> bool:
        """Whether this op's weight has one interval per output channel."""
        opts = self.plan_entry(op_name)[1]
        if opts.per_channel_weights is not None:
            return opts.per_channel_weights
        return (recipe or self.recipe()).per_channel_weights

    def weight_rounding_for(self, op_name: str, recipe: Recipe | None = None) -> str:
        """How this op's weight is rounded: its plan entry's ``weight_rounding``, else the effective recipe's."""
        opts = self.plan_entry(op_name)[1]
        if opts.weight_rounding is not None:
            return opts.weight_rounding
        return (recipe or self.recipe()).weight_rounding

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        """Build from a dict; version 1 configs (plans of bits only, per-tensor weights as ``false``) are
        upgraded to the current version."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        d = dict(d)
        version = d.get("version", CONFIG_VERSION)
        if version not in READABLE_VERSIONS:
            raise ConfigError(f"config version {version!r} is not supported (this vitq reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        d["version"] = CONFIG_VERSION  # v1 -> v2 changes no meaning: every v1 field reads the same
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> QuantConfig:
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(text_or_path)
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from e

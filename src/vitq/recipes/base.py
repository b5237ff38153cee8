"""What a method is: a :class:`Recipe`, and the registry every front end reads.

A recipe names, for one calibration method, everything that is not a number the user tunes:

- which quantizer sits at each operand role (:class:`Quantizers`): the inputs of Linears after a
  LayerNorm, after a GELU, the post-softmax attention map, the LayerNorm inputs of the fully
  quantized option, every other activation operand, and the weights (the uniform quantizer of Liu et
  al. Eq. 8 unless the recipe names another);
- whether the classification head is quantized, and a fixed bit-width for the patch embedding's input;
- the weight granularity (per tensor or per output channel) and rounding (to nearest, or GPTQ's
  error-feedback rounding on the searched grid, :mod:`vitq.calibration.gptq`);
- the function-preserving model transforms it folds in before its ops are calibrated (``sqb``,
  ``smoothquant``, ``repq``; run per calibration unit on that unit's own inputs);
- an orthogonal rotation of the whole model's residual stream, applied to the float model before its
  modules are swapped (``rotation``: ``hadamard``, ``hadamard-online``; :mod:`vitq.transforms.rotation`);
- the interval search (:class:`SearchSpec`: initialisation, objective, ranking loss, bias correction,
  candidate range), which :mod:`vitq.calibration` executes.

:data:`RECIPES` maps a name to its recipe; the modules of this package fill it with
:func:`register_recipe`, one module per method family. ``QuantConfig(method=...)``, the CLI's
``--method`` choices, ``vitq bench``'s method lists and the README's method table all read it.
:meth:`Recipe.resolve` applies a config's flags (``sqb``, ``optm``, ``fully_quantized``, ``alpha`` ...),
giving the effective recipe that ``vitq.quantize`` and ``vitq.calibrate`` execute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from vitq.errors import ConfigError

if TYPE_CHECKING:
    from vitq.config import QuantConfig

#: ``lp_percentile``: RepQ-ViT's range rule, quantile candidates scored by the tensor's own squared error
INITS = ("max", "percentile", "lp_percentile")
#: the candidate grids of :meth:`SearchSpec.factors`
GRIDS = ("linspace", "left")
#: the ``origin`` of a results row
ORIGINS = ("vitq", "baseline", "peer")
#: objectives computed from the op's output alone (per-sample moments: the fast search's levers apply)
SIMILARITY_OBJECTIVES = ("pearson", "cosine", "mse")
#: ``None``: no search (the intervals stay where the initialisation put them)
OBJECTIVES = (None, *SIMILARITY_OBJECTIVES, "hessian")
TRANSFORMS = ("sqb", "smoothquant", "repq")
POST_LAYERNORM = ("uniform", "affine")
POST_GELU = ("uniform", "affine", "optm", "ptq4vit")
#: every activation operand no role field names, and the weights: symmetric (Eq. 8) or asymmetric
INPUTS = ("uniform", "affine")
WEIGHTS = ("uniform", "affine")
#: PTQ4ViT's per-group intervals, :class:`Quantizers` fields
GROUP_OPTIONS = ("qkv_weight_blocks", "conv_weight_channels", "attention_heads")
POST_SOFTMAX = ("uniform", "unsigned", "optm", "ptq4vit", "log2", "log_sqrt2")
WEIGHT_ROUNDINGS = ("nearest", "gptq")


def check_weight_rounding(value: str, what: str = "weight_rounding") -> str:
    """Validate a weight-rounding name (one of :data:`WEIGHT_ROUNDINGS`) and return it."""
    if value not in WEIGHT_ROUNDINGS:
        raise ConfigError(f"{what}={value!r}: choose one of {', '.join(WEIGHT_ROUNDINGS)}")
    return value


#: residual-stream rotations (:mod:`vitq.transforms.rotation`); ``None``: none
ROTATIONS = (None, "hadamard", "hadamard-online")
#: what a config or ``--rotation`` may say: ``none`` turns a recipe's rotation off
CONFIG_ROTATIONS = ("none",) + tuple(r for r in ROTATIONS if r is not None)
#: the :class:`Reconstruction` settings a config may override, as ``recon_<name>`` fields (``--recon-<name>``)
RECON_SETTINGS = ("lr_scale", "lr_weight_scale", "drop_prob")


@dataclass(frozen=True)
class SearchSpec:
    """How one op's intervals are initialised and searched (Liu et al. 3.2 and the baselines).

    Attributes:
        init: ``"max"`` (interval covering max|x|), ``"percentile"`` (activation intervals from a percentile)
            or ``"lp_percentile"`` (RepQ-ViT: every operand's range among its 0.999 / 0.9999 / 0.99999
            quantiles, the one with the least squared error of the operand itself, per channel for
            per-channel weights; each quantizer's ``init_lp``).
        objective: ``None`` (no search: the initial intervals stay), ``"pearson"`` (Eq. 12), ``"cosine"``
            (EasyQuant), ``"mse"`` or ``"hessian"`` (PTQ4ViT, :class:`vitq.calibration.search.loss.HessianLoss`).
        ranking: add the ranking loss of Eq. 10 on attention scores (Eq. 11).
        bias_correction: Eq. 13-15 after each alternating round.
        alpha, beta: candidate range [alpha*Delta0, beta*Delta0].
        grid: ``"linspace"`` (C factors from alpha to beta, both ends included) or ``"left"`` (PTQ4ViT's
            code: alpha + i (beta - alpha) / C for i = 0..C-1, so beta itself is not a candidate).
        rounds: ``None`` (alternating rounds until one improves the objective by less than
            ``QuantConfig.tol``, at most ``QuantConfig.max_iters``), or exactly this many rounds (PTQ4ViT:
            3), still at most ``max_iters``.
    """

    init: str = "max"
    objective: str | None = None
    ranking: bool = False
    bias_correction: bool = False
    alpha: float = 0.5
    beta: float = 1.2
    grid: str = "linspace"
    rounds: int | None = None

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise ConfigError(f"grid={self.grid!r}: choose one of {', '.join(GRIDS)}")
        if self.rounds is not None and (isinstance(self.rounds, bool) or not isinstance(self.rounds, int)
                                        or self.rounds < 1):
            raise ConfigError(f"rounds={self.rounds!r} must be a positive integer or None (until converged)")
        if self.init not in INITS:
            raise ConfigError(f"init={self.init!r}: choose one of {', '.join(INITS)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}: choose one of {OBJECTIVES}")
        if self.ranking and self.objective not in SIMILARITY_OBJECTIVES:
            raise ConfigError(f"ranking=True needs an objective in {SIMILARITY_OBJECTIVES}; got {self.objective!r}")
        if not 0 < self.alpha <= self.beta:
            raise ConfigError(f"candidate range [{self.alpha}, {self.beta}] must satisfy 0 < alpha <= beta")

    def factors(self, num_candidates: int) -> list[float]:
        """The candidate grid: ``num_candidates`` factors of the initial interval, linear in [alpha, beta]
        (``torch.linspace`` rounding, so every search walks the same float32 grid)."""
        import torch

        if self.grid == "left":
            step = (self.beta - self.alpha) / num_candidates
            return torch.tensor([self.alpha + i * step for i in range(num_candidates)]).tolist()
        return torch.linspace(self.alpha, self.beta, num_candidates).tolist()


@dataclass(frozen=True)
class Reconstruction:
    """Block reconstruction after a unit's interval search (BRECQ, Li et al. ICLR 2021; QDrop, Wei et al.
    ICLR 2022; executed by :mod:`vitq.calibration.reconstruction`).

    Per calibration unit (a transformer block, the patch embedding), the weights' rounding (AdaRound,
    Nagel et al. ICML 2020) and the per-tensor uniform activation intervals (LSQ, Esser et al. ICLR
    2020) are learned with Adam by minimising the unit's output error against the float unit's output
    on the float inputs, starting from the searched intervals.

    Attributes:
        iters: Adam steps per unit (BRECQ/QDrop: 20,000; a few hundred suffice on small units).
        batch_size: calibration images per step.
        lr_rounding: Adam learning rate of the rounding variables.
        lr_scale: Adam learning rate of each activation interval, relative to the interval's value
            (0 keeps the searched intervals).
        lr_weight_scale: Adam learning rate of the log of a factor on each weight interval (per output
            channel where the weights are), learned with the rounding (0 keeps the searched intervals).
        round_weight: lambda, the weight of AdaRound's rounding regulariser.
        beta: the regulariser's temperature, annealed from the first value to the second.
        warmup: fraction of the steps without the regulariser.
        drop_prob: QDrop's probability of feeding an input element in float instead of quantized
            (0: the quantized inputs only, as BRECQ).
        learn_rounding: learn the weights' rounding (else they stay rounded to nearest).
        search_images: the interval search before it sees only the first this many calibration images
            (the search needs a few dozen, reconstruction hundreds to thousands);
            ``QuantConfig.search_images`` overrides it.
    """

    iters: int = 500
    batch_size: int = 16
    lr_rounding: float = 1e-2
    lr_scale: float = 1e-3
    lr_weight_scale: float = 0.0
    round_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    drop_prob: float = 0.5
    learn_rounding: bool = True
    search_images: int | None = 32

    def __post_init__(self) -> None:
        if self.search_images is not None and self.search_images < 1:
            raise ConfigError(f"reconstruction search_images={self.search_images!r} must be >= 1 or None (all)")
        if not isinstance(self.iters, int) or self.iters < 0:
            raise ConfigError(f"reconstruction iters={self.iters!r} must be an integer >= 0")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"reconstruction batch_size={self.batch_size!r} must be a positive integer")
        if self.lr_rounding <= 0 or self.lr_scale < 0 or self.lr_weight_scale < 0 or self.round_weight < 0:
            raise ConfigError("reconstruction lr_rounding must be > 0, lr_scale, lr_weight_scale and "
                              "round_weight >= 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.drop_prob <= 1:
            raise ConfigError(f"reconstruction warmup={self.warmup} must lie in [0, 1), "
                              f"drop_prob={self.drop_prob} in [0, 1]")
        if len(self.beta) != 2 or min(self.beta) <= 0:
            raise ConfigError(f"reconstruction beta={self.beta!r} must be two positive numbers (start, end)")


@dataclass(frozen=True)
class Quantizers:
    """The quantizer kind of each activation role whose quantizer a recipe may change.

    Attributes:
        post_layernorm: inputs of the Linears a LayerNorm feeds directly: ``uniform`` (Eq. 8) or
            ``affine`` (asymmetric, per channel while calibrating: RepQ-ViT's, reparameterised to one
            per-tensor interval).
        post_gelu: inputs of the Linears a GELU feeds directly: ``uniform``, ``optm`` (MPTQ-ViT's
            sign-split two-region quantizer, ratio searched) or ``ptq4vit`` (twin uniform, ratio fixed).
        post_softmax: the attention map, first operand of attn·V: ``uniform``, ``unsigned`` (Eq. 8 on the
            codes ``0..2^b-1``: the map is non-negative, so signed codes leave half of them unused),
            ``optm``/``ptq4vit`` (twin uniform, magnitude split), ``log2`` (FQ-ViT) or ``log_sqrt2`` (RepQ-ViT).
        layernorm_input: also quantize LayerNorm inputs with power-of-two factors (FQ-ViT).
        inputs: every other activation operand (Linear and Conv inputs no field above names, both
            operands of Q·K^T, V of attn·V): ``uniform`` (Eq. 8, symmetric) or ``affine`` (asymmetric,
            per tensor: RepQ-ViT's).
        weights: every quantized Linear / Conv weight: ``uniform`` (Eq. 8, symmetric) or ``affine``
            (asymmetric, per output channel or per tensor as ``per_channel_weights`` says: RepQ-ViT's).
        qkv_weight_blocks: a fused qkv Linear (the Linear of an attention module whose output is Q, K
            and V: ``out_features`` = 3 x heads x head_dim) gets one interval per q, k, v block of output
            rows, each searched on its own (PTQ4ViT's ``n_V=3``); per-tensor weights only (per-channel
            weights are finer already).
        conv_weight_channels: every quantized Conv weight (the patch embedding) one interval per output
            channel, each searched on its own (PTQ4ViT's ``ChannelwiseBatchingQuantConv2d``).
        attention_heads: Q and K (operands of Q·K^T) and V (second operand of attn·V) one interval per
            head, each searched on its own (PTQ4ViT's head-wise ``n_G``).

    The three group options (:class:`vitq.quantizers.grouped.GroupedUniformQuantizer`) need symmetric
    operands (``inputs``/``weights`` ``uniform``) and an objective that adds up over the output
    (``hessian``).
    """

    post_layernorm: str = "uniform"
    post_gelu: str = "uniform"
    post_softmax: str = "uniform"
    layernorm_input: bool = False
    inputs: str = "uniform"
    weights: str = "uniform"
    qkv_weight_blocks: bool = False
    conv_weight_channels: bool = False
    attention_heads: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("post_layernorm", POST_LAYERNORM), ("post_gelu", POST_GELU),
                              ("post_softmax", POST_SOFTMAX), ("inputs", INPUTS), ("weights", WEIGHTS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in GROUP_OPTIONS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        if (self.qkv_weight_blocks or self.conv_weight_channels) and self.weights != "uniform":
            raise ConfigError(f"qkv_weight_blocks / conv_weight_channels are symmetric intervals (Eq. 8): they need "
                              f"weights='uniform', got {self.weights!r}")
        if self.attention_heads and self.inputs != "uniform":
            raise ConfigError(f"attention_heads gives Q, K, V symmetric per-head intervals (Eq. 8): it needs "
                              f"inputs='uniform', got {self.inputs!r}")

    @property
    def grouped(self) -> bool:
        """Any of PTQ4ViT's per-group intervals (``GROUP_OPTIONS``)."""
        return any(getattr(self, name) for name in GROUP_OPTIONS)


@dataclass(frozen=True)
class Recipe:
    """One calibration method (see the module docstring).

    Attributes:
        name: the registry key, ``QuantConfig(method=name)`` and ``--method name``.
        summary: one line for tables and ``--help``.
        reference: paper and section the recipe follows.
        family: the module (method family) that registered it: ``baselines``, ``liu2021``, ...
        search: how each op's intervals are initialised and searched.
        quantizers: the quantizer kind per activation role.
        transforms: model transforms folded in before each unit's ops are calibrated.
        rotation: ``None``, ``"hadamard"`` (LayerNorms folded, residual stream and attention heads rotated
            offline) or ``"hadamard-online"`` (plus an online Hadamard before each MLP's second Linear),
            applied to the whole float model before the module swap (:mod:`vitq.transforms.rotation`).
        per_channel_weights: one weight interval per output channel by default (else per tensor).
        weight_rounding: how weights are rounded onto the searched grid: ``"nearest"`` (Eq. 8) or
            ``"gptq"`` (Frantar et al. 2023: column by column with error feedback through the inverse
            Hessian of the op's inputs, :mod:`vitq.calibration.gptq`), right after each op's search.
        reconstruction: ``None``, or block reconstruction after each unit's search (:class:`Reconstruction`).
        quantize_head: quantize the classification head too (``QuantConfig.quantize_head`` overrides it).
        conv_input_bits: the bit-width of every quantized Conv's input (the patch embedding) whatever
            the activation bit-width (RepQ-ViT: 8); ``None``: the activation bit-width. A plan entry's
            ``a_bits`` overrides it.
        float_conv_input: every quantized Conv's input (the patch embedding's, the image) stays float:
            only its weight is quantized (PTQ4ViT's ``a_bit=32``). Excludes ``conv_input_bits``; a plan
            entry's ``input_quantizer`` overrides it.
        table: listed in the paper-layout tables (Liu et al. Table 1) of ``vitq bench``.
        ablation: part of the Liu et al. Table 3 ablation.
        peer: ``vitq bench --peers`` adds it to the methods (the comparison table's rows).
        origin: what a results row of this recipe is: ``vitq`` (our methods: Liu et al., MPTQ-ViT and what
            we build on them), ``baseline`` (the papers' baselines) or ``peer`` (another group's method,
            re-implemented).
    """

    name: str
    summary: str
    reference: str
    search: SearchSpec
    quantizers: Quantizers = Quantizers()
    transforms: tuple[str, ...] = ()
    rotation: str | None = None
    per_channel_weights: bool = False
    weight_rounding: str = "nearest"
    reconstruction: Reconstruction | None = None
    quantize_head: bool = False
    conv_input_bits: int | None = None
    float_conv_input: bool = False
    family: str = ""
    table: bool = False
    ablation: bool = False
    peer: bool = False
    origin: str = "vitq"

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ConfigError(f"recipe {self.name!r}: origin={self.origin!r}: choose one of {', '.join(ORIGINS)}")
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad:
            raise ConfigError(f"recipe {self.name!r}: unknown transforms {bad}; choose from {', '.join(TRANSFORMS)}")
        if len(self.transforms) > 1:
            raise ConfigError(f"recipe {self.name!r}: at most one LayerNorm-folding transform, got {self.transforms}")
        check_weight_rounding(self.weight_rounding, f"recipe {self.name!r}: weight_rounding")
        if not isinstance(self.quantize_head, bool):
            raise ConfigError(f"recipe {self.name!r}: quantize_head={self.quantize_head!r} must be True or False")
        b = self.conv_input_bits  # the quantizers' range (2..16; recipes import no torch, so not check_bits)
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16):
            raise ConfigError(f"recipe {self.name!r}: conv_input_bits={b!r} is not valid: use an integer in 2..16")
        if not isinstance(self.float_conv_input, bool):
            raise ConfigError(f"recipe {self.name!r}: float_conv_input={self.float_conv_input!r} must be True or False")
        if self.float_conv_input and self.conv_input_bits is not None:
            raise ConfigError(f"recipe {self.name!r}: float_conv_input=True keeps the Conv input float; "
                              f"conv_input_bits={self.conv_input_bits} would quantize it: set one of them")
        if self.quantizers.grouped and self.search.objective != "hessian":
            raise ConfigError(f"recipe {self.name!r}: per-group intervals ({', '.join(GROUP_OPTIONS)}) are searched "
                              f"group by group, which needs the additive objective 'hessian'; got "
                              f"{self.search.objective!r}")
        if self.reconstruction is not None and self.reconstruction.learn_rounding and self.weight_rounding == "gptq":
            raise ConfigError(f"recipe {self.name!r}: reconstruction learns the weight rounding (AdaRound) from "
                              "the float weights; weight_rounding='gptq' would be overwritten: use one of them")
        if self.rotation not in ROTATIONS:
            raise ConfigError(f"recipe {self.name!r}: rotation={self.rotation!r}: choose one of "
                              f"{', '.join(map(str, ROTATIONS))}")
        if self.rotation is not None:
            uses_ln = [*self.transforms] + (["post_layernorm=" + self.quantizers.post_layernorm]
                                            if self.quantizers.post_layernorm != "uniform" else []) \
                + (["fully_quantized (LayerNorm inputs)"] if self.quantizers.layernorm_input else [])
            if uses_ln:
                raise ConfigError(f"recipe {self.name!r}: rotation={self.rotation!r} folds every LayerNorm into "
                                  f"the Linears and replaces it by an RMSNorm, so {', '.join(uses_ln)} has no "
                                  "LayerNorm to work on; use one or the other")

    @property
    def smoothing(self) -> str | None:
        """The LayerNorm-folding transform (``sqb``, ``smoothquant``, ``repq``) or ``None``."""
        return self.transforms[0] if self.transforms else None

    @property
    def is_plain(self) -> bool:
        """Uniform quantizers everywhere and no transform: the Liu et al. engine alone."""
        return self.quantizers == Quantizers() and not self.transforms

    # -- a config's flags ------------------------------------------------------------------------------
    def resolve(self, config: QuantConfig) -> Recipe:
        """The effective recipe: this one with ``config``'s flags applied (a flag overrides the recipe's
        choice). Raises :class:`ConfigError` on a conflict."""
        q, transforms = self.quantizers, self.transforms
        if config.sqb:
            if "repq" in transforms:
                raise ConfigError(f"sqb=True conflicts with method={self.name!r}, which already reparameterises "
                                  "the LayerNorm outputs; use one of them")
            transforms = ("sqb" if config.sqb_shift else "smoothquant",)
        elif "sqb" in transforms and not config.sqb_shift:
            transforms = ("smoothquant",)
        elif not config.sqb_shift:  # would be silently ignored: no SQ-b to take the shift out of
            raise ConfigError(f"sqb_shift=False applies to SQ-b, which method={self.name!r} does not use: set "
                              "sqb=True or use method 'mptq' / 'mptq-sqb'")
        if config.optm:
            q = replace(q, post_gelu="optm")
        if config.optm_softmax:
            q = replace(q, post_softmax="optm")
        if config.fully_quantized:
            q = replace(q, layernorm_input=True,
                        post_softmax="log2" if q.post_softmax == "uniform" else q.post_softmax)
        if transforms[:1] not in (("sqb",), ("smoothquant",)) and (config.sqb_proj or config.smoothquant_alpha is not None):
            raise ConfigError("sqb_proj and smoothquant_alpha apply to SQ-b / SmoothQuant: set sqb=True "
                              "or use method 'mptq' / 'mptq-sqb'")
        search = self.search
        if config.alpha is not None:
            search = replace(search, alpha=float(config.alpha))
        if config.beta is not None:
            search = replace(search, beta=float(config.beta))
        per_channel = self.per_channel_weights if config.per_channel_weights is None else config.per_channel_weights
        rounding = self.weight_rounding if config.weight_rounding is None else config.weight_rounding
        rotation = self.rotation
        if config.rotation is not None:
            rotation = None if config.rotation == "none" else config.rotation
        recon = self.reconstruction
        if config.recon_iters is not None:
            recon = None if config.recon_iters == 0 else replace(recon or Reconstruction(), iters=config.recon_iters)
        settings = {k: float(getattr(config, f"recon_{k}")) for k in RECON_SETTINGS
                    if getattr(config, f"recon_{k}") is not None}
        if settings and recon is None:  # would be silently ignored: no reconstruction to tune
            raise ConfigError(f"{', '.join('recon_' + k for k in settings)} tune block reconstruction, which "
                              f"method={self.name!r} does not run here: set recon_iters > 0 or use a method "
                              "with reconstruction (liu2021-pc-recon, ...)")
        if settings:
            recon = replace(recon, **settings)
        head = self.quantize_head if config.quantize_head is None else config.quantize_head
        return replace(self, quantizers=q, transforms=transforms, search=search, per_channel_weights=per_channel,
                       weight_rounding=rounding, rotation=rotation, reconstruction=recon, quantize_head=head)

    def input_bits(self, role: str, a_bits: int) -> int:
        """The bit-width of an op's first operand: ``conv_input_bits`` for a Conv (role ``conv``) when the
        recipe fixes it, else ``a_bits``."""
        return self.conv_input_bits if role == "conv" and self.conv_input_bits is not None else a_bits

    def row_fields(self, config: QuantConfig) -> dict:
        """Results-row fields naming the quantizer and transform choices (empty for plain recipes), and
        ``weight_rounding`` / ``rotation`` where a config flag changed the registered recipe's."""
        d: dict = {}
        registered = RECIPES.get(self.name)
        if registered is not None and self.weight_rounding != registered.weight_rounding:
            d["weight_rounding"] = self.weight_rounding
        if registered is not None and self.rotation != registered.rotation:
            d["rotation"] = self.rotation or "none"
        if registered is not None and self.reconstruction != registered.reconstruction:
            d["recon_iters"] = 0 if self.reconstruction is None else self.reconstruction.iters
            if self.reconstruction is not None:
                base = registered.reconstruction or Reconstruction()
                d.update({f"recon_{k}": getattr(self.reconstruction, k) for k in RECON_SETTINGS
                          if getattr(self.reconstruction, k) != getattr(base, k)})
        if self.is_plain:
            return d
        if self.smoothing is not None:
            d["smoothing"] = self.smoothing
        d.update({k: v for k, v in asdict(self.quantizers).items()
                  if k in ("post_gelu", "post_softmax") and v != "uniform"})
        if self.quantizers.layernorm_input:
            d["fully_quantized"] = True  # a key field of the results schema
        if self.smoothing in ("sqb", "smoothquant"):
            d["smoothquant_alpha"] = config.smoothquant_alpha if config.smoothquant_alpha is not None else "search"
            if config.sqb_proj:
                d["sqb_proj"] = True
        return d


#: name -> recipe, in registration order (filled by :func:`register_recipe`).
RECIPES: dict[str, Recipe] = {}


def register_recipe(factory: Callable[[], Recipe | tuple[Recipe, ...]]) -> Callable[[], Recipe | tuple[Recipe, ...]]:
    """Decorator: register the recipe(s) a factory function returns, under their names.

    The factory's module name (``vitq.recipes.<family>``) is recorded as the recipe's family. A name
    registered twice is an error.
    """
    made = factory()
    family = factory.__module__.rsplit(".", 1)[-1]
    for r in made if isinstance(made, tuple) else (made,):
        if r.name in RECIPES:
            raise ValueError(f"recipe {r.name!r} is registered twice ({RECIPES[r.name].family} and {family})")
        RECIPES[r.name] = replace(r, family=family)
    return factory


def recipe_names(*, table: bool | None = None, ablation: bool | None = None, peer: bool | None = None) -> list[str]:
    """Registered names in registration order, optionally only those with the given flags."""
    return [n for n, r in RECIPES.items()
            if (table is None or r.table == table) and (ablation is None or r.ablation == ablation)
            and (peer is None or r.peer == peer)]


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``, or :class:`ConfigError` listing the valid names."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"method={name!r} is unknown; choose one of {', '.join(RECIPES)}") from None

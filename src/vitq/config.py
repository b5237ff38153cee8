"""Typed, validated quantization configuration that round-trips to JSON.

:class:`QuantConfig` says what to quantize (bits, granularity, head) and how to calibrate (the method
recipe and its search hyper-parameters). Per-layer bit-widths (a mixed-precision plan) are an ordered
map from module name or ``re:`` regular expression to bits, the same shape as torchao's ``FqnToConfig``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vitq.errors import ConfigError
from vitq.quantizers.uniform import check_bits

CONFIG_VERSION = 1


@dataclass
class QuantConfig:
    """Everything that decides a quantized model.

    Attributes:
        w_bits: weight bit-width (2..16) of every quantized Linear / Conv.
        a_bits: bit-width of every matmul input: Linear inputs and both operands of Q·K^T and attn·V.
        method: calibration recipe, see :mod:`vitq.methods` (``liu2021``, ``minmax``, ``percentile``,
            ``easyquant``, ``mse``, and the ablations ``liu2021-sim``, ``liu2021-sim+rank``, ``liu2021-sim+bc``;
            ``mptq``, ``mptq-sqb``, ``mptq-optm``, ``ptq4vit``, ``repq-vit``: :mod:`vitq.methods.extended`).
        per_channel_weights: one weight interval per output channel instead of per tensor (the paper).
        quantize_head: also quantize the classification head (the paper lists W^E and the block weights
            only, so the default keeps the head in float).
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
        plan: per-op bits, ``{name or "re:regex": {"w_bits": b, "a_bits": b}}``; the first match wins.
        sqb: SQ-b (MPTQ-ViT): fold a per-channel shift and SmoothQuant scale of every LayerNorm output
            into the LayerNorm and the Linears it feeds (see :mod:`vitq.transforms.smoothing`).
        sqb_shift: with ``sqb``, include the shift (bias term); ``False`` is plain SmoothQuant.
        smoothquant_alpha: SQ-b / SmoothQuant migration strength in [0, 1]; ``None`` searches it.
        sqb_proj: also smooth the attention output projection through the V rows of qkv.
        optm: OPT-m two-region quantizer (power-of-two ratio searched) on post-GELU activations.
        optm_softmax: OPT-m's two-region search on post-softmax attention maps too.
        fully_quantized: also quantize LayerNorm inputs (power-of-two factors) and softmax outputs
            (log2), as FQ-ViT; off by default. Recipes and flags: :mod:`vitq.methods.extended`.
    """

    w_bits: int = 8
    a_bits: int = 8
    method: str = "liu2021"
    per_channel_weights: bool = False
    quantize_head: bool = False
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
    plan: dict[str, dict[str, int]] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        from vitq.methods import method_names

        if self.method not in method_names():
            raise ConfigError(f"method={self.method!r} is unknown; choose one of {', '.join(method_names())}")
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
        for name in ("sqb", "sqb_shift", "sqb_proj", "optm", "optm_softmax", "fully_quantized"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        a = self.smoothquant_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1):
            raise ConfigError(f"smoothquant_alpha={a!r} must be a number in [0, 1] or null (search it)")
        from vitq.methods.extended import resolve_choices

        resolve_choices(self)  # flag / recipe conflicts
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"config version {self.version} is not supported (this vitq reads {CONFIG_VERSION})")
        for key, bits in self.plan.items():
            if not isinstance(bits, dict) or not set(bits) <= {"w_bits", "a_bits"}:
                raise ConfigError(f"plan[{key!r}]={bits!r}: expected a dict with keys w_bits and/or a_bits")
            for k, b in bits.items():
                check_bits(b, f"plan[{key!r}].{k}")
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as e:
                    raise ConfigError(f"plan key {key!r} is not a valid regular expression: {e}") from e

    # -- per-op bits -----------------------------------------------------------------------------------
    def bits_for(self, op_name: str) -> tuple[int, int]:
        """``(w_bits, a_bits)`` for the op with this qualified name: the first matching plan entry, else uniform."""
        for key, bits in self.plan.items():
            hit = re.fullmatch(key[3:], op_name) if key.startswith("re:") else key == op_name
            if hit:
                return bits.get("w_bits", self.w_bits), bits.get("a_bits", self.a_bits)
        return self.w_bits, self.a_bits

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
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

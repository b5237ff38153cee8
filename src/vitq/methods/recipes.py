"""The recipe table: Liu et al. (2021), its ablations and the baselines of its Table 1."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitq.config import QuantConfig


@dataclass(frozen=True)
class MethodSpec:
    """How one method calibrates an op.

    Attributes:
        init: ``"max"`` (interval covering max|x|) or ``"percentile"`` (activation intervals from a percentile).
        objective: ``None`` (no search), ``"pearson"`` (Eq. 12), ``"cosine"`` (EasyQuant), ``"mse"`` or
            ``"hessian"`` (PTQ4ViT, :class:`vitq.calibration.search.loss.HessianLoss`).
        ranking: add the ranking loss of Eq. 10 on attention scores (Eq. 11).
        bias_correction: Eq. 13-15 after each search round.
        alpha, beta: candidate range [alpha*Delta0, beta*Delta0].
    """

    name: str
    init: str = "max"
    objective: str | None = None
    ranking: bool = False
    bias_correction: bool = False
    alpha: float = 0.5
    beta: float = 1.2


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("minmax"),
        MethodSpec("percentile", init="percentile"),
        MethodSpec("mse", objective="mse"),
        MethodSpec("easyquant", objective="cosine", alpha=0.5, beta=2.0),
        MethodSpec("liu2021-sim", objective="pearson"),
        MethodSpec("liu2021-sim+rank", objective="pearson", ranking=True),
        MethodSpec("liu2021-sim+bc", objective="pearson", bias_correction=True),
        MethodSpec("liu2021", objective="pearson", ranking=True, bias_correction=True),
        # Recipes with other quantizers / transforms (which ones: vitq.methods.extended). MPTQ-ViT's
        # parts run with the Liu et al. search; PTQ4ViT: Hessian-guided objective over [0.01, 1.2]
        # (their config); RepQ-ViT: output MSE (their quantizers minimise the input's MSE).
        MethodSpec("mptq", objective="pearson", ranking=True, bias_correction=True),
        MethodSpec("mptq-sqb", objective="pearson", ranking=True, bias_correction=True),
        MethodSpec("mptq-optm", objective="pearson", ranking=True, bias_correction=True),
        MethodSpec("ptq4vit", objective="hessian", alpha=0.01, beta=1.2),
        MethodSpec("repq-vit", objective="mse"),
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def resolve_method(config: QuantConfig) -> MethodSpec:
    """The recipe of ``config.method`` with the config's ``alpha``/``beta`` overrides applied."""
    spec = METHODS[config.method]
    if config.alpha is not None:
        spec = replace(spec, alpha=float(config.alpha))
    if config.beta is not None:
        spec = replace(spec, beta=float(config.beta))
    return spec

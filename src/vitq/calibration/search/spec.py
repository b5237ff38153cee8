"""What one op's interval search optimises: the search part of a calibration recipe.

A recipe (``vitq.methods`` today) holds one :class:`SearchSpec`; the search package reads nothing else
of the recipe and never imports it. How the candidates are evaluated (``search="fast"`` or
``"reference"``) and the grid size are calibration options, not part of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INITS = ("max", "percentile")
#: objectives computed from the op's output alone (per-sample moments: the fast search's levers apply)
OBJECTIVES = ("pearson", "cosine", "mse")
#: ``None``: no search (the intervals stay where the initialisation put them)
OBJECTIVE_CHOICES = (None, *OBJECTIVES, "hessian")
SPEC_FIELDS = ("init", "objective", "ranking", "bias_correction", "alpha", "beta")


@dataclass(frozen=True)
class SearchSpec:
    """How one op is calibrated.

    Attributes:
        init: ``"max"`` (interval covering max|x|) or ``"percentile"`` (activation intervals from a percentile).
        objective: ``None`` (no search), ``"pearson"`` (Liu et al. Eq. 12), ``"cosine"`` (EasyQuant),
            ``"mse"`` or ``"hessian"`` (PTQ4ViT, :class:`~vitq.calibration.search.loss.HessianLoss`).
        ranking: add the ranking loss of Eq. 10 on attention scores (Eq. 11); similarity objectives only.
        bias_correction: Eq. 13-15 after each search round.
        alpha, beta: candidate range [alpha*Delta0, beta*Delta0].
    """

    init: str = "max"
    objective: str | None = None
    ranking: bool = False
    bias_correction: bool = False
    alpha: float = 0.5
    beta: float = 1.2

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r}: choose one of {INITS}")
        if self.objective not in OBJECTIVE_CHOICES:
            raise ValueError(f"objective={self.objective!r}: choose one of {OBJECTIVE_CHOICES}")
        if self.ranking and self.objective not in OBJECTIVES:
            raise ValueError(f"ranking=True needs a similarity objective {OBJECTIVES}; got {self.objective!r}")

    @classmethod
    def of(cls, recipe) -> SearchSpec:
        """The spec of any object with the same attribute names (a recipe's search fields)."""
        if isinstance(recipe, SearchSpec):
            return recipe
        return cls(**{f: getattr(recipe, f) for f in SPEC_FIELDS})

    def factors(self, num_candidates: int) -> list[float]:
        """The candidate grid: ``num_candidates`` factors of the initial interval, linear in [alpha, beta]."""
        return torch.linspace(self.alpha, self.beta, num_candidates).tolist()

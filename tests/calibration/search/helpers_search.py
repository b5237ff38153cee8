"""Search specs of the recipes the search tests use (as the recipe table defines them), and a way to
build one op's evaluator as :func:`~vitq.calibration.search.search_op` does."""

import torch

from vitq.calibration.search.alternating import make_evaluator
from vitq.calibration.search.loss import make_loss
from vitq.recipes import SearchSpec

SPECS = {
    "mse": SearchSpec(objective="mse"),
    "easyquant": SearchSpec(objective="cosine", alpha=0.5, beta=2.0),
    "liu2021-sim": SearchSpec(objective="pearson"),
    "liu2021-sim+rank": SearchSpec(objective="pearson", ranking=True),
    "liu2021-sim+bc": SearchSpec(objective="pearson", bias_correction=True),
    "liu2021": SearchSpec(objective="pearson", ranking=True, bias_correction=True),
    "mptq": SearchSpec(objective="pearson", ranking=True, bias_correction=True),
    "ptq4vit": SearchSpec(objective="hessian", alpha=0.01, beta=1.2),
}


def evaluator(search, op, data, spec, *, gamma=0.0, pairs=0, margin=0.0, seed=0):
    """The evaluator ``search_op(search=search)`` uses for ``op`` (ranking options as its arguments)."""
    gen = torch.Generator().manual_seed(seed)

    def loss_for(d):
        return make_loss(spec, d, op.role, ranking_gamma=gamma, ranking_pairs=pairs, ranking_margin=margin, generator=gen)

    return make_evaluator(search, op, data, spec, loss_for)

"""The baselines of Liu et al. (2021) Table 1: MinMax, Percentile, EasyQuant, and an output-MSE search.

All four use the uniform quantizer of Eq. 8 everywhere and the same engine as the Liu et al. method.
EasyQuant (Wu et al. 2020) searches scales in [0.5, 2] x the max scale with cosine similarity,
alternating weights and activations.
"""

from vitq.recipes.base import Recipe, SearchSpec, register_recipe


@register_recipe
def baselines() -> tuple[Recipe, ...]:
    return (
        Recipe("minmax", "intervals cover max|x|, no search", "Liu et al. 2021, Table 1 (baseline)",
               SearchSpec(), table=True, origin="baseline"),
        Recipe("percentile", "activation intervals at the 99.99th percentile of |x|",
               "Liu et al. 2021, Table 1 (baseline)", SearchSpec(init="percentile"), table=True, origin="baseline"),
        Recipe("easyquant", "alternating search, cosine similarity, [0.5, 2.0] x max",
               "Wu et al. 2020 (EasyQuant); Liu et al. 2021, Table 1", SearchSpec(objective="cosine", beta=2.0),
               table=True, origin="baseline"),
        Recipe("mse", "alternating search, output MSE, [0.5, 1.2] x max", "Liu et al. 2021, Table 1 (our MSE row)",
               SearchSpec(objective="mse"), table=True, origin="baseline"),
    )

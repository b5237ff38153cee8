"""Liu et al., *Post-Training Quantization for Vision Transformer* (NeurIPS 2021), and its ablation.

Section 3: the uniform quantizer of Eq. 8 everywhere, the similarity-aware objective (Pearson
correlation, Eq. 12), the ranking-aware loss on attention scores (Eq. 10-11), the alternating search
of weight and input intervals over C candidates in [0.5, 1.2] x max (Sec. 4), and bias correction
(Eq. 13-15). The ``-sim``, ``-sim+rank`` and ``-sim+bc`` recipes are the rows of its Table 3.
"""

from vitq.recipes.base import Recipe, SearchSpec, register_recipe

PAPER = "Liu et al., NeurIPS 2021"
#: the full search of Sec. 3 (similarity + ranking + bias correction), shared by the recipes built on it
SEARCH = SearchSpec(objective="pearson", ranking=True, bias_correction=True)


@register_recipe
def liu2021() -> tuple[Recipe, ...]:
    return (
        Recipe("liu2021", "similarity (Pearson) + ranking loss + bias correction, alternating search",
               f"{PAPER}, Sec. 3 (Eq. 8-15)",
               SEARCH, table=True, ablation=True),
        Recipe("liu2021-sim", "ablation: similarity-aware search only", f"{PAPER}, Table 3",
               SearchSpec(objective="pearson"), ablation=True),
        Recipe("liu2021-sim+rank", "ablation: similarity + ranking loss", f"{PAPER}, Table 3",
               SearchSpec(objective="pearson", ranking=True), ablation=True),
        Recipe("liu2021-sim+bc", "ablation: similarity + bias correction", f"{PAPER}, Table 3",
               SearchSpec(objective="pearson", bias_correction=True), ablation=True),
    )

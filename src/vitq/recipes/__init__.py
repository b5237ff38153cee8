"""Calibration methods as registered recipes: ``vitq.recipes.RECIPES`` maps each name to its :class:`Recipe`.

One module per method family fills the registry (:func:`register_recipe`):

- :mod:`~vitq.recipes.baselines`: ``minmax``, ``percentile``, ``easyquant``, ``mse`` (Liu et al. Table 1).
- :mod:`~vitq.recipes.liu2021`: ``liu2021`` and its ablation ``liu2021-sim``, ``-sim+rank``, ``-sim+bc``.
- :mod:`~vitq.recipes.mptq`: ``mptq``, ``mptq-sqb``, ``mptq-optm`` (MPTQ-ViT's SQ-b and OPT-m).
- :mod:`~vitq.recipes.ptq4vit`: ``ptq4vit``; :mod:`~vitq.recipes.repq_vit`: ``repq-vit``.
- :mod:`~vitq.recipes.gptq`: ``gptq`` (Frantar et al. 2023 as a peer), ``liu2021-gptq``, and ``liu2021-pc``
  (per-channel weights, the ablation step before GPTQ rounding).
- :mod:`~vitq.recipes.rotation`: ``rtn-rot``, ``liu2021-rot`` (QuaRot-style rotated residual stream).
- :mod:`~vitq.recipes.reconstruction`: ``liu2021-rot-gptq``, ``liu2021-rot-recon``, ``liu2021-pc-recon``
  (block reconstruction: AdaRound + LSQ + QDrop, after the search).

Adding a method is one new module here with its ``@register_recipe`` factory, plus its import below.
``python -c "import vitq.recipes as r; print(sorted(r.RECIPES))"`` lists every method the CLI accepts.
"""

from vitq.recipes import (  # noqa: F401  (registration)
    baselines,
    gptq,
    liu2021,
    mptq,
    ptq4vit,
    reconstruction,
    repq_vit,
    rotation,
)

# isort: split
from vitq.recipes import asymmetric  # noqa: F401  (registered last: it builds on liu2021 and stays after the baselines)

# isort: split
from vitq.recipes.base import (
    RECIPES,
    WEIGHT_ROUNDINGS,
    Quantizers,
    Recipe,
    Reconstruction,
    SearchSpec,
    check_weight_rounding,
    get_recipe,
    recipe_names,
    register_recipe,
)


def recipes_table() -> str:
    """The registry as a Markdown table (the README's method table is this output)."""
    lines = ["| method | family | search | quantizers / transforms | reference |", "|---|---|---|---|---|"]
    for r in RECIPES.values():
        s = r.search
        search = "none" if s.objective is None else s.objective + (" + ranking" if s.ranking else "") \
            + (" + bias corr." if s.bias_correction else "") + f", [{s.alpha:g}, {s.beta:g}]"
        if s.init != "max":
            search = f"{s.init} init, {search}"
        parts = [f"{k}: {v}" for k, v in vars(r.quantizers).items() if v not in ("uniform", False)]
        parts += ["per-channel weights"] * r.per_channel_weights
        parts += [f"weight rounding: {r.weight_rounding}"] * (r.weight_rounding != "nearest")
        parts += [f"transform: {t}" for t in r.transforms]
        parts += [f"rotation: {r.rotation}"] if r.rotation else []
        parts += ["head quantized"] * r.quantize_head
        parts += [f"Conv input {r.conv_input_bits}-bit"] if r.conv_input_bits is not None else []
        parts += [f"block reconstruction ({r.reconstruction.iters} steps/unit)"] if r.reconstruction else []
        lines.append(f"| `{r.name}` | {r.family} | {search} | {', '.join(parts) or 'uniform (Eq. 8)'} | {r.reference} |")
    return "\n".join(lines)


__all__ = ["RECIPES", "WEIGHT_ROUNDINGS", "Quantizers", "Recipe", "Reconstruction", "SearchSpec", "check_weight_rounding", "get_recipe",
           "recipe_names", "recipes_table", "register_recipe"]

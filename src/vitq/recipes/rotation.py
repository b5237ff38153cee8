"""Rotated recipes: LayerNorms folded and the residual stream rotated by a randomized Hadamard matrix
before quantization (QuaRot, Ashkboos et al. 2024; the LayerNorm folding of SliceGPT, Ashkboos et al.
2024), then calibrated with per-channel weight intervals.

The rotation is :mod:`vitq.transforms.rotation` (run by the ``rotate`` stage of :func:`vitq.quantize`);
any recipe takes it with ``QuantConfig(rotation="hadamard")`` / ``--rotation hadamard``.

- ``rtn-rot``: the simplest rotated baseline: max intervals (round to nearest), no search.
- ``liu2021-rot``: Liu et al.'s search (Pearson + ranking + bias correction) on the rotated model.
"""

from vitq.recipes.base import Recipe, SearchSpec, register_recipe
from vitq.recipes.liu2021 import SEARCH as LIU_SEARCH

QUAROT = "Ashkboos et al. 2024 (QuaRot), rotation + LayerNorm folding (SliceGPT)"


@register_recipe
def rotation() -> tuple[Recipe, ...]:
    return (
        Recipe("rtn-rot", "Hadamard-rotated residual stream, max intervals (no search), per-channel weights",
               f"{QUAROT}; RTN baseline", SearchSpec(), rotation="hadamard", per_channel_weights=True),
        Recipe("liu2021-rot", "Hadamard-rotated residual stream, Liu et al.'s search, per-channel weights",
               f"{QUAROT}; Liu et al., NeurIPS 2021, Sec. 3",
               LIU_SEARCH, rotation="hadamard",
               per_channel_weights=True),
    )

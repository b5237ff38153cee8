"""MPTQ-ViT: SQ-b (shifted SmoothQuant folded into LayerNorm and Linear) and OPT-m (a sign-split
two-region quantizer on post-GELU inputs), calibrated with the Liu et al. search.

SQ-b is :mod:`vitq.transforms.smoothing`, OPT-m :class:`vitq.quantizers.two_region.TwoRegionQuantizer`.
``mptq-sqb`` and ``mptq-optm`` are the two parts alone. Greedy mixed precision: :mod:`vitq.mp.greedy`.
"""

from vitq.recipes.base import Quantizers, Recipe, register_recipe
from vitq.recipes.liu2021 import SEARCH as LIU_SEARCH

PAPER = "Tai & Wu, MPTQ-ViT, arXiv 2401.14895"


@register_recipe
def mptq() -> tuple[Recipe, ...]:
    return (
        Recipe("mptq", "SQ-b + OPT-m on post-GELU inputs, Liu et al.'s search", f"{PAPER} (SQ-b, OPT-m; formulas ours)",
               LIU_SEARCH, Quantizers(post_gelu="optm"), transforms=("sqb",), peer=True),
        Recipe("mptq-sqb", "SQ-b alone, Liu et al.'s search", f"{PAPER} (SQ-b)", LIU_SEARCH, transforms=("sqb",)),
        Recipe("mptq-optm", "OPT-m alone, Liu et al.'s search", f"{PAPER} (OPT-m)", LIU_SEARCH,
               Quantizers(post_gelu="optm")),
    )

"""PTQ4ViT (Yuan et al., ECCV 2022): twin uniform quantizers on post-softmax and post-GELU inputs,
intervals searched with the Hessian-guided objective over [0.01, 1.2] x max (their configuration).

Twin uniform: :class:`vitq.quantizers.two_region.TwinUniformQuantizer` and the ``ptq4vit`` mode of
:class:`~vitq.quantizers.two_region.TwoRegionQuantizer`; objective: :mod:`vitq.calibration.hessian`.
"""

from vitq.recipes.base import Quantizers, Recipe, SearchSpec, register_recipe


@register_recipe
def ptq4vit() -> Recipe:
    return Recipe("ptq4vit", "twin uniform post-softmax / post-GELU, Hessian-guided search",
                  "Yuan et al., ECCV 2022 (PTQ4ViT), Sec. 3-4",
                  SearchSpec(objective="hessian", alpha=0.01, beta=1.2),
                  Quantizers(post_gelu="ptq4vit", post_softmax="ptq4vit"), peer=True, origin="peer")

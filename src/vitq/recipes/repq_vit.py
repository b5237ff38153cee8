"""RepQ-ViT (Li et al., ICCV 2023): post-LayerNorm activations calibrated per channel (asymmetric) and
reparameterised to one per-tensor interval folded into the LayerNorm and the next Linear; a log-sqrt(2)
quantizer on post-softmax maps; intervals by output MSE (their quantizers minimise the input's MSE).

Reparameterisation: :mod:`vitq.transforms.smoothing` (``repq``); quantizers:
:class:`vitq.quantizers.affine.AffineQuantizer`, :class:`vitq.quantizers.log.LogSqrt2Quantizer`.
"""

from vitq.recipes.base import Quantizers, Recipe, SearchSpec, register_recipe


@register_recipe
def repq_vit() -> Recipe:
    return Recipe("repq-vit", "per-channel post-LayerNorm reparameterisation, log-sqrt2 post-softmax, MSE search",
                  "Li et al., ICCV 2023 (RepQ-ViT), Sec. 3",
                  SearchSpec(objective="mse"), Quantizers(post_layernorm="affine", post_softmax="log_sqrt2"),
                  transforms=("repq",), peer=True, origin="peer")

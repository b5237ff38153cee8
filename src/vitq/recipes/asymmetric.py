"""Asymmetric activations: every activation operand quantized per tensor on the codes ``0..2^b-1`` with
an integer zero point (:class:`vitq.quantizers.affine.AffineQuantizer`, its max range widened to contain
0), weights symmetric per output channel, Liu et al.'s search.

The 8-bit recipe of the low-bit ablation. On DINOv2 at W8A8 the operand that costs most is V (the second
operand of attn·V: `liu2021-pc` gains 0.6 points with it float, 1,000 images), whose range is far from
symmetric; a signed grid spends half its codes on values V never takes. RepQ-ViT quantizes every
activation this way; here the zero points stay integers, so the model exports to ONNX QDQ (uint8 with
that zero point, :class:`vitq.export.onnx_qdq.QDQActivation`) and packs.

- ``liu2021-pc-asym``: ``liu2021-pc`` with ``Quantizers(inputs="affine")``.
"""

from vitq.recipes.base import Quantizers, Recipe, register_recipe
from vitq.recipes.liu2021 import PAPER as LIU
from vitq.recipes.liu2021 import SEARCH as LIU_SEARCH

ASYMMETRIC = Quantizers(inputs="affine")


@register_recipe
def asymmetric() -> Recipe:
    return Recipe("liu2021-pc-asym", "Liu et al.'s search, per-channel weights, asymmetric per-tensor activations "
                  "(integer zero points)", f"{LIU}, Sec. 3; asymmetric activations as RepQ-ViT's, exportable",
                  LIU_SEARCH, ASYMMETRIC, per_channel_weights=True)

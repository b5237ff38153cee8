"""RepQ-ViT (Li et al., ICCV 2023) as its authors' public code runs it (zkkli/RepQ-ViT at a160561,
``classification/test_quant.py``, ``quant/quantizer.py``, ``quant/quant_modules.py``):

- weights: asymmetric, per output channel, on every Linear and Conv including the classification head
  (``quantize_head=True``; ``Quantizers.weights="affine"``, ``per_channel_weights=True``);
- activations: asymmetric per tensor everywhere (``inputs="affine"``, post-GELU ``affine``); the inputs of
  the Linears after a LayerNorm (qkv, fc1) calibrated per channel, then reparameterised to one per-tensor
  interval folded into the LayerNorm and the Linear (transform ``repq``,
  :func:`vitq.transforms.smoothing.repq_reparameterisation`), whose input interval becomes the mean of
  the per-channel scales and zero points;
- post-softmax: log-sqrt(2) (:class:`vitq.quantizers.log.LogSqrt2Quantizer`);
- the patch embedding's input at 8 bits whatever the activation bit-width (``conv_input_bits=8``);
- ranges: every quantizer's range from its 0.999 / 0.9999 / 0.99999 quantiles, the candidate with the
  least squared error of the quantized tensor itself (``SearchSpec(init="lp_percentile")``, each
  quantizer's ``init_lp``); no output-error search, one pass (``objective=None``).

Remaining departures from the authors' code are listed in ``docs/design.md`` ("RepQ-ViT: the authors'
settings and vitq's").
"""

from vitq.recipes.base import Quantizers, Recipe, SearchSpec, register_recipe


@register_recipe
def repq_vit() -> Recipe:
    return Recipe("repq-vit", "asymmetric per-channel weights (head too), asymmetric activations, per-channel "
                  "post-LayerNorm reparameterisation, log-sqrt2 post-softmax, percentile ranges, no search",
                  "Li et al., ICCV 2023 (RepQ-ViT), Sec. 3; authors' code zkkli/RepQ-ViT",
                  SearchSpec(init="lp_percentile", objective=None),
                  Quantizers(post_layernorm="affine", post_gelu="affine", post_softmax="log_sqrt2",
                             inputs="affine", weights="affine"),
                  transforms=("repq",), per_channel_weights=True, quantize_head=True, conv_input_bits=8,
                  peer=True, origin="peer")

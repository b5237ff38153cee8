"""PTQ4ViT (Yuan et al., ECCV 2022) as its authors' public code runs it (hahnyuan/PTQ4ViT at b42c790,
``configs/PTQ4ViT.py``, ``quant_layers/linear.py``, ``matmul.py``, ``conv.py``):

- weights symmetric; a fused qkv Linear one interval per q, k, v block of output rows
  (``qkv_weight_blocks``, their ``n_V*=3``), the patch embedding one per output channel, each searched on
  its own (``conv_weight_channels``), proj / fc1 / fc2 / head per tensor; the classification head
  quantized (``quantize_head=True``);
- activations symmetric per tensor; Q, K and V one interval per head (``attention_heads``); the patch
  embedding's input (the image) float (``float_conv_input``, their ``a_bit=32``);
- post-softmax: twin uniform, coarse interval 1/(2^(b-1)-1), split point 2^-k, k < 20
  (:class:`vitq.quantizers.two_region.TwinUniformQuantizer`, mode ``ptq4vit``);
- post-GELU: negative interval fixed at 0.16997/2^(b-1), positive searched
  (:class:`~vitq.quantizers.two_region.TwoRegionQuantizer`, mode ``ptq4vit``);
- search: the Hessian-guided output error (:mod:`vitq.calibration.hessian`), candidates
  0.01 + i (1.2 - 0.01) / C of the max interval, i < C (their grid, C = 100), 3 alternating rounds.

Remaining departures from the authors' code are listed in ``docs/design.md`` ("PTQ4ViT: the authors'
settings and vitq's").
"""

from vitq.recipes.base import Quantizers, Recipe, SearchSpec, register_recipe


@register_recipe
def ptq4vit() -> Recipe:
    return Recipe("ptq4vit", "twin uniform post-softmax / post-GELU, Hessian-guided search, q/k/v weight blocks, "
                  "per-channel patch embedding, per-head Q/K/V, float image input, head quantized",
                  "Yuan et al., ECCV 2022 (PTQ4ViT), Sec. 3-4; authors' code hahnyuan/PTQ4ViT",
                  SearchSpec(objective="hessian", alpha=0.01, beta=1.2, grid="left", rounds=3),
                  Quantizers(post_gelu="ptq4vit", post_softmax="ptq4vit", qkv_weight_blocks=True,
                             conv_weight_channels=True, attention_heads=True),
                  quantize_head=True, float_conv_input=True, peer=True, origin="peer")

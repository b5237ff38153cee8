"""Block reconstruction recipes (BRECQ, Li et al. ICLR 2021; QDrop, Wei et al. ICLR 2022; AdaRound,
Nagel et al. ICML 2020; LSQ, Esser et al. ICLR 2020), the last steps of the low-bit ablation:

    liu2021-pc (per-channel weights) -> liu2021-rot (+ rotation) -> liu2021-rot-gptq (+ GPTQ rounding)
    -> liu2021-rot-recon (+ block reconstruction: learned rounding instead of GPTQ's, learned activation
    intervals)

The interval search runs first on the first ``search_images`` calibration images; then each unit's
weight rounding and activation intervals are learned against the float unit
(:mod:`vitq.calibration.reconstruction`) on all of them. Give reconstruction hundreds of images
(``--num-calib 512``): on 32 it has little to learn from (measured in ``benchmarks/results/lowbit/README.md``).

- ``liu2021-pc-recon``: the same without rotation.
- ``liu2021-rot-recon-log2``, ``liu2021-pc-recon-log2``: the same with FQ-ViT's log2 quantizer on the attention
  map (the first operand of attn·V). At 4 bits the signed uniform grid (Eq. 8) puts the
  non-negative map on 8 levels and every attention weight below max/14 to zero, and most are (tens to
  hundreds of tokens share each row): measured on fmnist-vit, liu2021-pc W4A4
  gains 2.5 points from it, and disabling that one quantizer recovers 2.9 of the 4.2 points lost. Exported
  exactly as two 8-bit integer products (:mod:`vitq.export.onnx_qdq`).
"""

from vitq.recipes.base import Quantizers, Recipe, Reconstruction, register_recipe
from vitq.recipes.gptq import PAPER as GPTQ
from vitq.recipes.liu2021 import PAPER as LIU
from vitq.recipes.liu2021 import SEARCH as LIU_SEARCH
from vitq.recipes.rotation import QUAROT

FQVIT = "Lin et al., IJCAI 2022 (FQ-ViT), log2 attention map"
LOG2 = Quantizers(post_softmax="log2")
BRECQ = "Li et al., ICLR 2021 (BRECQ) + Wei et al., ICLR 2022 (QDrop): AdaRound rounding, LSQ intervals"


@register_recipe
def reconstruction() -> tuple[Recipe, ...]:
    return (
        Recipe("liu2021-rot-gptq", "rotated residual stream, Liu et al.'s search, per-channel weights, GPTQ rounding",
               f"{QUAROT}; {LIU}, Sec. 3; {GPTQ}", LIU_SEARCH, rotation="hadamard", per_channel_weights=True,
               weight_rounding="gptq"),
        Recipe("liu2021-rot-recon", "rotated residual stream, Liu et al.'s search, per-channel weights, "
               "block reconstruction", f"{QUAROT}; {LIU}, Sec. 3; {BRECQ}", LIU_SEARCH, rotation="hadamard",
               per_channel_weights=True, reconstruction=Reconstruction()),
        Recipe("liu2021-pc-recon", "Liu et al.'s search, per-channel weights, block reconstruction",
               f"{LIU}, Sec. 3; {BRECQ}", LIU_SEARCH, per_channel_weights=True, reconstruction=Reconstruction()),
        Recipe("liu2021-rot-recon-log2", "rotated residual stream, Liu et al.'s search, per-channel weights, "
               "block reconstruction, log2 attention map", f"{QUAROT}; {LIU}, Sec. 3; {BRECQ}; {FQVIT}",
               LIU_SEARCH, LOG2, rotation="hadamard", per_channel_weights=True, reconstruction=Reconstruction()),
        Recipe("liu2021-pc-recon-log2", "Liu et al.'s search, per-channel weights, block reconstruction, log2 "
               "attention map", f"{LIU}, Sec. 3; {BRECQ}; {FQVIT}", LIU_SEARCH, LOG2, per_channel_weights=True,
               reconstruction=Reconstruction()),
    )

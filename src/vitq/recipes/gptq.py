"""GPTQ (Frantar et al., ICLR 2023) weight rounding: the LLM world's post-training baseline as a peer,
and on top of Liu et al.'s interval search.

GPTQ rounds each weight column in turn and feeds its rounding error forward through the inverse
Hessian of the layer's inputs (:mod:`vitq.calibration.gptq`, which lists where ours departs from the
authors' code). It changes which grid point each weight takes, not the grid, so it composes with any
interval search: the engine runs it on every Linear / Conv right after that op's search.

- ``gptq``: the authors' setting as far as this toolkit's quantizers allow: per-output-channel weight
  intervals covering max|w| (no search; symmetric Eq. 8 grid, not their asymmetric min-max), GPTQ
  rounding; activations per tensor at max|x|. The paper quantizes weights only (activations stay
  FP16); here the activations are quantized too, at ``a_bits``, as every recipe of this toolkit does.
  Its round-to-nearest baseline (their ``--nearest``) is ``--method gptq --weight-rounding nearest``.
- ``liu2021-pc``: Liu et al. (search, ranking, bias correction) with per-channel weights, rounded to nearest.
- ``liu2021-gptq``: the same with GPTQ rounding (the ablation ``liu2021`` -> ``-pc`` -> ``-gptq``).
"""

from vitq.recipes.base import Recipe, SearchSpec, register_recipe
from vitq.recipes.liu2021 import PAPER as LIU
from vitq.recipes.liu2021 import SEARCH as LIU_SEARCH

PAPER = "Frantar et al., ICLR 2023 (GPTQ)"


@register_recipe
def gptq() -> tuple[Recipe, ...]:
    return (
        Recipe("gptq", "per-channel max weight intervals, GPTQ rounding; activations per-tensor max, no search",
               PAPER, SearchSpec(), per_channel_weights=True, weight_rounding="gptq", peer=True, origin="peer"),
        Recipe("liu2021-pc", "Liu et al.'s search with per-channel weight intervals", f"{LIU}, Sec. 3; per-channel weights",
               LIU_SEARCH, per_channel_weights=True),
        Recipe("liu2021-gptq", "Liu et al.'s search, per-channel weights, GPTQ rounding after each op's search",
               f"{LIU}, Sec. 3 + {PAPER}", LIU_SEARCH, per_channel_weights=True, weight_rounding="gptq"),
    )

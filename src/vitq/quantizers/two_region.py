"""Two-interval quantizers: one b-bit code, two scales.

:class:`TwoRegionQuantizer` splits by **sign** (post-GELU activations, the input of fc2):

    x >= 0:  Delta+ * clamp(round(x / Delta+), 0, 2^(b-1) - 1)
    x <  0:  Delta- * clamp(round(x / Delta-), -2^(b-1), 0)

- ``mode="optm"``, OPT-m of MPTQ-ViT as designed here ([D] in ``mptq-vit-design.md``; the paper's
  equations are not at hand): the ratio m = Delta+/Delta- is a power of two 2^k, k in
  0..``max_log2_ratio``, and (k, Delta+) are searched jointly from data with the op's objective,
  Delta+ over fractions ``fractions`` of max(x) / (2^(b-1) - 1).
- ``mode="ptq4vit"``: PTQ4ViT's hand-set rule (Yuan et al. 2022; their ``PostGelu`` linear layers):
  Delta- = 0.16997 / 2^(b-1) fixed so the negative codes cover GELU's minimum, and only Delta+ is
  searched, over the method's grid. As in their public code the ratio is not forced to a power of two.

Integer (export) form: a signed b-bit code q; dequantization multiplies by Delta+ when q >= 0 and by
Delta- when q < 0. With m = 2^k the negative branch is (q * Delta+) >> k, so requantization needs one
integer multiplier and a sign-selected shift. The quantizer has at most 2^b distinct values.

Measured on GELU-shaped data (``tests/quantizers/test_two_region.py``), fc2-output error against one
symmetric interval: 1.17x lower at 4 bits, 1.9x at 6 bits. At 4 bits an *unsigned* uniform quantizer
(all 16 codes on x >= 0, negatives to 0) is 2x lower still, since the sign split spends half its codes
on [-0.17, 0); at 6 bits the split beats it by 2x.

:class:`TwinUniformQuantizer` splits by **magnitude** (post-softmax attention maps, x in [0, 1]),
PTQ4ViT's twin uniform quantization: region R1 = [0, 2^(b-1) Delta_R1) with a fine interval, region
R2 with Delta_R2 = 2^k Delta_R1; each region a (b-1)-bit unsigned code, plus one region bit:

    x <  2^(b-1) Delta_R1:  Delta_R1 * clamp(round(x / Delta_R1), 0, 2^(b-1) - 1)
    otherwise:              Delta_R2 * clamp(round(x / Delta_R2), 0, 2^(b-1) - 1)

- ``mode="ptq4vit"``: Delta_R2 = 1 / (2^(b-1) - 1) fixed (their ``SoSPTQSLBatchingQuantMatMul``: the top
  code is 1.0), k searched in 0..19 (the split points 2^-k of their code: Delta_R1 = 2^-k / (2^(b-1) - 1)). Their code's split-of-softmax adds the two regions' values instead of selecting one
  (so values at and above the split carry an offset); we follow the paper's definition.
- ``mode="optm"`` (the design's optional OPT-m for softmax maps): k in 0..``max_log2_ratio`` and
  Delta_R2 over ``fractions`` of max(x) / (2^(b-1) - 1), searched jointly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vitq.distributed import shard_max, shard_min
from vitq.errors import ConfigError
from vitq.quantizers.base import LossFn, SearchableQuantizer
from vitq.quantizers.grid import coarse_indices, coarse_to_fine

#: min_x x * Phi(x), GELU's minimum (at x ~ -0.7518), PTQ4ViT's constant for the negative region
GELU_MIN = -0.16997124254703522
TINY = 1e-12


def _check_mode(mode: str) -> str:
    if mode not in ("optm", "ptq4vit"):
        raise ConfigError(f"mode={mode!r}: choose 'optm' or 'ptq4vit'")
    return mode


def _joint_search(ks: range, num_f: int, loss_at, exhaustive: bool) -> tuple[int, int, float]:
    """Best (k, f) index pair of a k x f grid: the coarse samples of f for every k in ``ks``, then the
    :func:`~vitq.quantizers.grid.walk` over f for the best coarse point's k (everything when
    ``exhaustive``). ``loss_at`` is memoised, so the walk does not re-evaluate the coarse samples."""
    if exhaustive:
        best = min(((k, f) for k in ks for f in range(num_f)), key=lambda kf: loss_at(*kf))
        return best[0], best[1], loss_at(*best)
    coarse = coarse_indices(num_f)
    per_k = {}
    for k in ks:
        f = min(coarse, key=lambda j, k=k: loss_at(k, j))
        per_k[k] = (f, loss_at(k, f))
    k_best = min(per_k, key=lambda k: per_k[k][1])
    f_best, loss = coarse_to_fine(num_f, lambda j: loss_at(k_best, j))
    return k_best, f_best, loss


def _window(self, ratio: float, exhaustive: bool) -> range:
    """All k on the first search after ``init_max``; then (fast search only) k within 1 of the current
    ratio's, since the alternating rounds move the other operand's interval only a little."""
    if exhaustive or not getattr(self, "_searched", False):
        return range(self.max_log2_ratio + 1)
    k = min(max(round(math.log2(max(ratio, 1.0))), 0), self.max_log2_ratio)
    return range(max(0, k - 1), min(self.max_log2_ratio, k + 1) + 1)


class _Cached:
    """Memoises a loss function of grid indices (the grids are re-walked by the joint search)."""

    def __init__(self, fn):
        self.fn, self.cache = fn, {}

    def __call__(self, *idx):
        if idx not in self.cache:
            self.cache[idx] = self.fn(*idx)
        return self.cache[idx]


class TwoRegionQuantizer(SearchableQuantizer):
    """Sign-split two-interval quantizer for post-GELU activations (see the module docstring).

    Args:
        bits: total bits b of the signed code.
        mode: ``"optm"`` (search the power-of-two ratio and Delta+) or ``"ptq4vit"`` (fixed Delta-).
        max_log2_ratio: largest k of m = 2^k in OPT-m (2^0 .. 2^8 by default).
        fractions: OPT-m's range of Delta+ as fractions of max(x) / (2^(b-1) - 1).

    Buffers: ``scale`` = Delta+, ``neg_scale`` = Delta-.
    """

    def __init__(self, bits: int = 8, mode: str = "optm", max_log2_ratio: int = 8,
                 fractions: tuple[float, float] = (0.05, 1.2)):
        super().__init__(bits)
        self.mode = _check_mode(mode)
        self.max_log2_ratio = int(max_log2_ratio)
        self.fractions = fractions
        self.register_buffer("neg_scale", torch.ones(()))

    _ratio_window = _window

    @property
    def ratio(self) -> float:
        """m = Delta+ / Delta-."""
        return float(self.scale / self.neg_scale)

    def _fq(self, x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        n = 2 ** (self.bits - 1)
        p = torch.div(x.clamp(min=0), pos).round_().clamp_(0, n - 1).mul_(pos)
        return p.add_(torch.div(x.clamp(max=0), neg).round_().clamp_(-n, 0).mul_(neg))

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Candidate Delta+; OPT-m keeps the ratio m, PTQ4ViT keeps its fixed Delta-."""
        neg = self.neg_scale * (scale / self.scale) if self.mode == "optm" else self.neg_scale
        return self._fq(x, scale, neg)

    def _ptq4vit_neg(self) -> torch.Tensor:
        return torch.tensor(-GELU_MIN / 2 ** (self.bits - 1), device=self.scale.device)

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        self._searched = False
        pos = (shard_max(x.detach().max()).clamp_min(TINY) / self.qmax).float()
        self.scale.copy_(pos)
        if self.mode == "ptq4vit":
            self.neg_scale.copy_(self._ptq4vit_neg())
            return
        lo = float(-shard_min(x.detach().min()).clamp(max=0))
        # the largest power-of-two ratio whose negative codes still reach min(x)
        k = self.max_log2_ratio if lo == 0 else int(torch.log2(pos * 2 ** (self.bits - 1) / lo).floor().item())
        self.neg_scale.copy_(pos / 2 ** min(max(k, 0), self.max_log2_ratio))

    @torch.no_grad()
    def search(self, x: torch.Tensor, loss_fn: LossFn, current_loss: float, base: torch.Tensor,
               factors: Sequence[float], exhaustive: bool = False) -> float:
        if self.mode == "ptq4vit":
            neg = self._ptq4vit_neg()
            i, loss = coarse_to_fine(len(factors), lambda j: loss_fn(self._fq(x, base * factors[j], neg)), exhaustive)
            if loss < current_loss:
                self.scale.copy_(base * factors[i])
                self.neg_scale.copy_(neg)
                return loss
            return current_loss
        grid = torch.linspace(self.fractions[0], self.fractions[1], max(2, len(factors))).tolist()
        top = shard_max(x.detach().max()).clamp_min(TINY) / self.qmax

        def loss_at(k: int, j: int) -> float:
            pos = top * grid[j]
            return loss_fn(self._fq(x, pos, pos / 2**k))

        k, j, loss = _joint_search(self._ratio_window(self.ratio, exhaustive), len(grid), _Cached(loss_at), exhaustive)
        self._searched = True
        if loss < current_loss:
            self.scale.copy_(top * grid[j])
            self.neg_scale.copy_(top * grid[j] / 2**k)
            return loss
        return current_loss

    def levels(self) -> torch.Tensor:
        n = 2 ** (self.bits - 1)
        pos = torch.arange(0, n, dtype=torch.float64) * float(self.scale)
        neg = torch.arange(-n, 0, dtype=torch.float64) * float(self.neg_scale)
        return torch.unique(torch.cat([neg, pos]))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, m={self.ratio:.4g}, enabled={self.enabled}"


class TwinUniformQuantizer(SearchableQuantizer):
    """Magnitude-split twin uniform quantizer for post-softmax maps (see the module docstring).

    Buffers: ``scale`` = Delta_R2 (the coarse interval), ``fine_scale`` = Delta_R1.
    """

    def __init__(self, bits: int = 8, mode: str = "ptq4vit", max_log2_ratio: int | None = None,
                 fractions: tuple[float, float] = (0.05, 1.2)):
        super().__init__(bits)
        self.mode = _check_mode(mode)
        self.max_log2_ratio = int(max_log2_ratio if max_log2_ratio is not None else (19 if mode == "ptq4vit" else 8))
        self.fractions = fractions
        self.register_buffer("fine_scale", torch.ones(()))

    _ratio_window = _window

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def _fq(self, x: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        n = 2 ** (self.bits - 1)
        lo = torch.div(x, fine).round_().clamp_(0, n - 1).mul_(fine)
        hi = torch.div(x, coarse).round_().clamp_(0, n - 1).mul_(coarse)
        return torch.where(x < n * fine, lo, hi)

    def fake_quant_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Candidate Delta_R2 with the ratio Delta_R2 / Delta_R1 kept."""
        return self._fq(x, scale, self.fine_scale * (scale / self.scale))

    def _coarse_ptq4vit(self) -> torch.Tensor:
        return torch.tensor(1.0 / (2 ** (self.bits - 1) - 1), device=self.scale.device)

    @torch.no_grad()
    def init_max(self, x: torch.Tensor) -> None:
        self._searched = False
        coarse = self._coarse_ptq4vit() if self.mode == "ptq4vit" else shard_max(x.detach().max()).clamp_min(TINY) / self.qmax
        self.scale.copy_(coarse)
        # PTQ4ViT initialises the split point (top of R1) at 0.01
        split = 0.01
        k = round(float(torch.log2(coarse * 2 ** (self.bits - 1) / split)))
        self.fine_scale.copy_(coarse / 2 ** min(max(k, 0), self.max_log2_ratio))

    @torch.no_grad()
    def search(self, x: torch.Tensor, loss_fn: LossFn, current_loss: float, base: torch.Tensor,
               factors: Sequence[float], exhaustive: bool = False) -> float:
        if self.mode == "ptq4vit":
            coarse = self._coarse_ptq4vit()
            ks = range(self.max_log2_ratio + 1)
            losses = {k: loss_fn(self._fq(x, coarse, coarse / 2**k)) for k in ks}
            k = min(losses, key=losses.__getitem__)
            if losses[k] < current_loss:
                self.scale.copy_(coarse)
                self.fine_scale.copy_(coarse / 2**k)
                return losses[k]
            return current_loss
        grid = torch.linspace(self.fractions[0], self.fractions[1], max(2, len(factors))).tolist()
        top = shard_max(x.detach().max()).clamp_min(TINY) / self.qmax

        def loss_at(k: int, j: int) -> float:
            c = top * grid[j]
            return loss_fn(self._fq(x, c, c / 2**k))

        ratio = float(self.scale / self.fine_scale)
        k, j, loss = _joint_search(self._ratio_window(ratio, exhaustive), len(grid), _Cached(loss_at), exhaustive)
        self._searched = True
        if loss < current_loss:
            self.scale.copy_(top * grid[j])
            self.fine_scale.copy_(top * grid[j] / 2**k)
            return loss
        return current_loss

    def levels(self) -> torch.Tensor:
        n = 2 ** (self.bits - 1)
        fine = torch.arange(0, n, dtype=torch.float64) * float(self.fine_scale)
        # R2 codes whose value lies below R1's top are never selected (those inputs go to R1)
        coarse = torch.arange(0, n, dtype=torch.float64) * float(self.scale)
        coarse = coarse[coarse >= n * float(self.fine_scale) - 0.5 * float(self.scale)]
        return torch.unique(torch.cat([fine, coarse]))

    def extra_repr(self) -> str:
        ratio = float(self.scale / self.fine_scale)
        return f"bits={self.bits}, mode={self.mode}, ratio={ratio:.4g}, enabled={self.enabled}"

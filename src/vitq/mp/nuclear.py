"""Nuclear-norm sensitivity (Liu et al. 2021, Sec. 3.3, Eq. 16-17).

For an MSA unit the feature is the attention map A (softmax output, the first operand of attn·V, as
that op quantizes it); for an MLP unit (or a finer unit) it is the output feature O of its last op.
With only that unit quantized at b bits (cheap intervals, see :mod:`vitq.mp.probe`):

    Omega_u(b) = tr(F_u) * ||F_u(b) - F_u||^2            (one term of Eq. 17)

where tr is the nuclear norm (Eq. 16). Features are batches of matrices: per image and head ``N x N``
for A, per image ``tokens x channels`` for O. Both factors are means over those matrices (the paper
does not say how it reduces over images; a mean keeps Omega independent of the calibration set size).

``msa_feature="output"`` (our option, not the paper's) uses the MSA module's output (the proj output)
instead of A: then MSA and MLP terms measure the same kind of tensor (a residual-branch output) on the
same scale, and the quantization of attn·V and proj enters the MSA term too. With A, attention
probabilities in [0, 1] give MSA terms orders of magnitude below MLP terms, so the DP starves MSA units.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch
from tqdm.auto import tqdm

from vitq.errors import ConfigError
from vitq.mp.probe import QuantProbe
from vitq.mp.units import MPUnit
from vitq.nn.qops import QuantOp


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    """Nuclear norms of a batch of matrices ``(..., m, n)`` -> ``(...)`` (float64).

    Sum of singular values, computed as the square roots of the eigenvalues of the smaller Gram matrix
    (``X X^T`` or ``X^T X``, symmetric, so ``eigvalsh``): about 3x faster than an SVD. The Gram matrix is
    formed in float64 so that small singular values survive the squaring.
    """
    x = x.double()
    m, n = x.shape[-2:]
    gram = x @ x.mT if m <= n else x.mT @ x
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(-1)


def as_matrices(t: torch.Tensor, op: QuantOp, attention_map: bool) -> torch.Tensor:
    """A feature tensor as a batch of matrices ``(k, m, n)``."""
    if attention_map or op.role in ("attn_scores", "attn_context"):
        return t.reshape(-1, *t.shape[-2:])  # (B, heads, N, N or d) -> per image and head
    if op.role == "conv":
        return t.reshape(t.shape[0], t.shape[1], -1)  # (B, C, H, W) -> channels x positions
    return t.reshape(t.shape[0], -1, t.shape[-1])  # (B, ..., C) -> tokens x channels


MSA_FEATURES = ("attention", "output")


def feature_of(unit: MPUnit, msa_feature: str = "attention") -> tuple[str, bool]:
    """``(op name, is the attention map)``: where unit's Eq. 17 feature is read."""
    if msa_feature not in MSA_FEATURES:
        raise ConfigError(f"msa_feature={msa_feature!r}: choose one of {', '.join(MSA_FEATURES)}")
    if unit.uses_attention_map and msa_feature == "attention":
        return unit.feature_op, True
    return unit.ops[-1], False


class _FeatureTap:
    """Records a unit's feature on every call of its feature op."""

    def __init__(self, op: QuantOp, attention_map: bool):
        self.op, self.attention_map, self.out = op, attention_map, []

    def __enter__(self):
        if self.attention_map:
            # The attention map as attn·V consumes it: quantized by that op's A quantizer when enabled.
            self.h = self.op.register_forward_pre_hook(lambda m, args: self.out.append(m.quantizers()[0](args[0])))
        else:
            self.h = self.op.register_forward_hook(lambda m, args, out: self.out.append(out))
        return self

    def __exit__(self, *exc):
        self.h.remove()

    def matrices(self) -> torch.Tensor:
        return torch.cat([as_matrices(t, self.op, self.attention_map) for t in self.out])


@torch.no_grad()
def nuclear_sensitivity(probe: QuantProbe, units: Sequence[MPUnit], candidates: Sequence[int],
                        batches: Sequence[torch.Tensor], *, msa_feature: str = "attention",
                        progress: bool = False) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Omega_u(b) of Eq. 17 for every unit and candidate bit-width.

    One float forward per batch captures every block's input and every unit's float feature; then each
    unit is quantized alone at each b and only its block is re-run.

    Returns:
        ``(omega, nuc)``: ``omega[unit][b]`` and the mean nuclear norm ``nuc[unit]`` of its float feature.
    """
    modules = dict(probe.qmodel.named_modules())
    where = {u.name: feature_of(u, msa_feature) for u in units}
    blocks = {u.block for u in units}
    nuc_sum = {u.name: 0.0 for u in units}
    err_sum = {u.name: {b: 0.0 for b in candidates} for u in units}
    count = {u.name: 0 for u in units}
    probe.enable_all(False)
    bar = tqdm(total=len(batches) * len(units), desc="nuclear-norm sensitivity", unit="unit", disable=not progress)
    for images in batches:
        block_inputs: dict[str, tuple] = {}

        def grab(name, store=block_inputs):
            def hook(_m, a, kw):
                store.setdefault(name, (a, kw))
            return hook

        taps = [_FeatureTap(probe.ops[where[u.name][0]], where[u.name][1]) for u in units]
        with ExitStack() as stack:
            for t in taps:
                stack.enter_context(t)
            for b in blocks:
                stack.callback(modules[b].register_forward_pre_hook(grab(b), with_kwargs=True).remove)
            probe.forward(images)
        for u, tap in zip(units, taps):
            ref = tap.matrices()
            nuc_sum[u.name] += nuclear_norm(ref).sum().item()
            count[u.name] += ref.shape[0]
            args, kwargs = block_inputs[u.block]
            for b in candidates:
                probe.set_bits(u.ops, b, enabled=True)
                with _FeatureTap(probe.ops[where[u.name][0]], where[u.name][1]) as qtap:
                    modules[u.block](*args, **kwargs)
                err_sum[u.name][b] += (qtap.matrices().double() - ref.double()).pow(2).sum().item()
            probe.enable(u.ops, False)
            bar.update()
    bar.close()
    nuc = {n: nuc_sum[n] / count[n] for n in nuc_sum}
    omega = {n: {b: nuc[n] * err_sum[n][b] / count[n] for b in candidates} for n in nuc_sum}
    return omega, nuc

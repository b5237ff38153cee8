"""Hessian-guided calibration objective (PTQ4ViT, Yuan et al. 2022).

PTQ4ViT scores an op's candidate intervals by the second-order change of the task loss, approximated
per output element by the squared output gradient (a diagonal Fisher / Gauss-Newton term):

    loss = E[ sum_j (dL/dO_j)^2 (O_hat_j - O_j)^2 ]

The labels are not available at calibration time. PTQ4ViT's code back-propagates the KL divergence
between the partly quantized model and the float predictions, whose gradient vanishes until earlier
layers are quantized. Here the gradient is that of the cross-entropy of the **float** model against its
own top-1 prediction (the empirical Fisher of the float model, whose Hessian of KL(float || model)
at the float model is the Fisher): it is nonzero for every op, computed with quantization disabled,
once per calibration unit, on the same batches the engine uses. :func:`output_grad_squares` computes
(dL/dO)^2 for the ops of one unit; :class:`HessianLossMixin` makes an op search use it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.errors import VitqError
from vitq.eval.metrics import logits_of
from vitq.nn.qops import quantization_disabled


def output_grad_squares(model: nn.Module, batches: list[torch.Tensor], forward, ops: dict[str, nn.Module]
                        ) -> dict[str, torch.Tensor]:
    """``{op name: (dL/dO)^2}`` with the shape of the op's output concatenated over ``batches`` (and over
    repeated calls within a batch, in call order), L the float model's cross-entropy to its own top-1."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in ops}
    with torch.enable_grad(), quantization_disabled(model):
        for b in batches:
            seen: dict[str, list[torch.Tensor]] = {n: [] for n in ops}
            handles = [op.register_forward_hook(lambda _m, _a, o, n=n, seen=seen: seen[n].append(o)) for n, op in ops.items()]
            try:
                x = b.detach().clone().requires_grad_(True)
                logits = logits_of(forward(model, x)).float()
            finally:
                for h in handles:
                    h.remove()
            if logits.dim() != 2:
                raise VitqError(f"the Hessian objective needs classification logits (N, classes); got {tuple(logits.shape)}")
            loss = F.cross_entropy(logits, logits.detach().argmax(dim=-1), reduction="sum")
            names = [n for n in ops for _ in seen[n]]
            tensors = [t for n in ops for t in seen[n]]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            per: dict[str, list[torch.Tensor]] = {n: [] for n in ops}
            for n, t, g in zip(names, tensors, grads):
                per[n].append(torch.zeros_like(t) if g is None else g.detach().pow(2))
            for n in ops:
                out[n].extend(per[n])
    return {n: torch.cat(v) for n, v in out.items() if v}


class HessianLossMixin:
    """Search loss: mean over samples of sum_j g_j^2 (O_hat_j - O_j)^2, g from :func:`output_grad_squares`
    (``OpData.out_weight``). Mixed into :class:`~vitq.calibration.search.OpSearch` and its subclasses."""

    def loss(self, a_q: torch.Tensor, b_q: torch.Tensor) -> float:
        w = self.data.out_weight
        if w is None or w.shape != self.data.target.shape:
            raise VitqError(f"the Hessian objective needs output gradients shaped like the op output "
                            f"{tuple(self.data.target.shape)}; got {None if w is None else tuple(w.shape)}")
        compute = getattr(self, "compute", self.op.compute)
        total = 0.0
        for rows in self._rows():
            d = compute(a_q[rows], self._b_rows(b_q, rows)) - self.data.target[rows]
            total += (d.pow(2) * w[rows]).sum().item()
        return total / self.n

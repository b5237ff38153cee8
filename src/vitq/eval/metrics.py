"""Evaluation: logits in batches, top-1, agreement with the float model, SQNR.

Non-finite logits never become a result: :func:`predict` and the metrics that take logits raise
:class:`~vitq.errors.NonFiniteError` on NaN or inf (an argmax over NaN would give a meaningless accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from vitq.errors import NonFiniteError


def check_finite_logits(logits: torch.Tensor, what: str = "logits", offset: int = 0) -> torch.Tensor:
    """``logits`` unchanged if every value is finite; else :class:`NonFiniteError` naming ``what``, how many
    images (rows) hold NaN / inf and the first one (its index plus ``offset``)."""
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return logits
    rows = ~finite.reshape(finite.shape[0] if logits.dim() else 1, -1).all(1)
    bad = rows.nonzero().flatten()
    n_nan = int(torch.isnan(logits).sum())
    raise NonFiniteError(f"{what}: {len(bad)} of {rows.numel()} images have non-finite outputs "
                         f"({n_nan} NaN, {int(finite.numel() - finite.sum()) - n_nan} inf values; first at image "
                         f"{int(bad[0]) + offset}); no accuracy is computed from them")


def logits_of(output) -> torch.Tensor:
    """The main output tensor of a model call: a tensor as is, else ``.logits`` (classification models),
    else ``.pooler_output`` (``ViTModel``/``DeiTModel`` with pooler, ``Dinov2Model``: the CLS token),
    else ``.last_hidden_state``; a tuple gives its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64, progress: bool = False,
            desc: str = "eval", forward: Callable | None = None) -> torch.Tensor:
    """Logits ``(N, classes)`` of ``model`` on preprocessed ``images`` ``(N, C, H, W)``, in batches.

    Raises:
        NonFiniteError: the model gave NaN or inf for some image (named by its index and ``desc``).
    """
    model.eval()
    device = next(model.parameters()).device
    outs = []
    start = 0
    for b in tqdm(images.split(batch_size), desc=desc, unit="batch", disable=not progress):
        out = forward(model, b.to(device)) if forward else model(b.to(device))
        outs.append(check_finite_logits(logits_of(out).float().cpu(), f"{desc}: the model's logits", start))
        start += b.shape[0]
    return torch.cat(outs)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose top-1 prediction is the label; non-finite logits raise :class:`NonFiniteError`."""
    check_finite_logits(logits, "top1: logits")
    return (logits.argmax(-1) == labels).float().mean().item()


def agreement(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """Fraction of images whose top-1 prediction equals the reference (float) model's; non-finite logits
    (either) raise :class:`NonFiniteError`."""
    check_finite_logits(logits, "agreement: logits")
    check_finite_logits(ref_logits, "agreement: reference logits")
    return (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(E[ref^2] / E[(ref - out)^2]) in dB (``inf`` when ``out``
    equals ``ref``); non-finite inputs raise :class:`NonFiniteError`."""
    check_finite_logits(ref, "sqnr_db: reference")
    check_finite_logits(out, "sqnr_db: output")
    noise = (ref.double() - out.double()).pow(2).mean().item()
    signal = ref.double().pow(2).mean().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)

"""Evaluation: logits in batches, top-1, agreement with the float model, SQNR."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm


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
    """Logits ``(N, classes)`` of ``model`` on preprocessed ``images`` ``(N, C, H, W)``, in batches."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for b in tqdm(images.split(batch_size), desc=desc, unit="batch", disable=not progress):
        out = forward(model, b.to(device)) if forward else model(b.to(device))
        outs.append(logits_of(out).float().cpu())
    return torch.cat(outs)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def agreement(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """Fraction of images whose top-1 prediction equals the reference (float) model's."""
    return (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(E[ref^2] / E[(ref - out)^2]) in dB."""
    noise = (ref.double() - out.double()).pow(2).mean().item()
    signal = ref.double().pow(2).mean().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)

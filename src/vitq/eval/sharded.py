"""Evaluation on every rank's shard of the test images, with the numbers one process gives on all of them.

Under ``torchrun`` each rank predicts its contiguous block of the images (:func:`vitq.distributed.shard`);
top-1 comes from the correct counts summed over ranks, the agreement with a reference from the per-image
predictions gathered in image order, the SQNR from sums of squares summed over ranks. In one process every
function here equals its :mod:`vitq.eval.metrics` counterpart bit for bit (top-1 and agreement are the
same float32 means; the SQNR sums are float64 either way, so a data-parallel SQNR matches to ~1e-12 dB).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from vitq.distributed import all_gather_rows, all_reduce_sum, is_main, shard
from vitq.eval.metrics import check_finite_logits, predict


def predict_shard(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64, progress: bool = False,
                  desc: str = "eval", forward: Callable | None = None, sharded: bool = False) -> torch.Tensor:
    """Logits of this rank's shard of ``images`` (all of them in one process), in batches; rank 0 alone shows
    the progress bar. ``sharded``: ``images`` are this rank's block already (``load_images(..., shard=True)``)."""
    mine = images if sharded else shard(images, "test images")
    return predict(model, mine, batch_size=batch_size, progress=progress and is_main(), desc=desc, forward=forward)


def gather_predictions(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 class of every image, every rank's shard gathered in image order: ``(N,)`` int64 on every rank."""
    check_finite_logits(logits, "predictions: logits")
    return all_gather_rows(logits.argmax(-1))


def top1_all(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 over every rank's shard: ``logits`` of this rank's images, ``labels`` of all the images (this
    rank's rows are taken) or of this rank's only. The correct counts are summed over ranks."""
    if labels.shape[0] != logits.shape[0]:
        labels = shard(labels, "labels")
    check_finite_logits(logits, "top1: logits")
    correct = int(all_reduce_sum(torch.tensor((logits.argmax(-1) == labels.to(logits.device)).sum().item())))
    total = int(all_reduce_sum(torch.tensor(logits.shape[0])))
    # float32 like metrics.top1's mean of 0/1 values: the same number as one process, bit for bit
    return (torch.tensor(float(correct)) / total).item()


def agreement_all(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """Fraction of all images whose top-1 equals the reference's, from the gathered predictions."""
    check_finite_logits(ref_logits, "agreement: reference logits")
    pred, ref = gather_predictions(logits), gather_predictions(ref_logits)
    return (pred == ref).float().mean().item()


def sqnr_db_all(ref: torch.Tensor, out: torch.Tensor) -> float:
    """:func:`vitq.eval.metrics.sqnr_db` over every rank's shard (float64 sums of squares summed over ranks)."""
    check_finite_logits(ref, "sqnr_db: reference")
    check_finite_logits(out, "sqnr_db: output")
    sums = torch.stack([(ref.double() - out.double()).pow(2).sum(), ref.double().pow(2).sum(),
                        torch.tensor(float(ref.numel()), dtype=torch.float64)])
    noise, signal, n = all_reduce_sum(sums).tolist()
    return math.inf if noise == 0 else 10 * math.log10((signal / n) / (noise / n))

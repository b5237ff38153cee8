"""Per-layer output SQNR of a quantized model against its float model: where the error grows.

Both models see the same images end to end; the output of every quantized op is compared with the output
of the float module of the same name, so each figure includes the error accumulated upstream (the drop
from one layer to the next is what that layer adds). The attention products are explicit modules only in
the quantized model, so the float side is the float model swapped by :func:`vitq.quantize` with every
quantizer left disabled: the same module names, computing exactly the float model.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from vitq.config import QuantConfig
from vitq.errors import VitqError
from vitq.info import get_quant_info
from vitq.lifecycle import quantize
from vitq.nn.qops import quant_ops


@contextmanager
def _quiet(name: str):
    """Messages of logger ``name`` below WARNING are dropped inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        logger.setLevel(level)


def _float_reference(float_model: nn.Module, qmodel: nn.Module) -> nn.Module:
    if getattr(float_model, "vitq_info", None) is not None:
        raise VitqError("layer_sqnr: float_model is a quantized model; pass the float model it was made from")
    cfg = get_quant_info(qmodel).config
    # a plain config (no recipe quantizers or folding): only the module swap, every quantizer disabled; a
    # rotated model's reference is rotated the same way (same rotation and seed), so op outputs match. An
    # internal copy: its "quantize: ... adapter swapped" line would read as the run quantizing twice
    rotation = get_quant_info(qmodel).recipe.rotation or "none"
    with _quiet("vitq.lifecycle"):
        ref = quantize(float_model, QuantConfig(w_bits=cfg.w_bits, a_bits=cfg.a_bits, quantize_head=cfg.quantize_head,
                                                rotation=rotation, seed=cfg.seed))
    for op in quant_ops(ref).values():
        op.set_enabled(False)
    return ref


def _capture(modules: dict[str, nn.Module], store: dict[str, list[torch.Tensor]]) -> list:
    def hook(name):
        def fn(_m, _args, out):
            if isinstance(out, torch.Tensor):
                store.setdefault(name, []).append(out.detach())
        return fn

    return [m.register_forward_hook(hook(n)) for n, m in modules.items()]


def _outputs_of(model: nn.Module, modules: dict[str, nn.Module], forward, batch: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The outputs of ``modules`` during one forward of ``model`` on ``batch``."""
    out: dict[str, list[torch.Tensor]] = {}
    handles = _capture(modules, out)
    try:
        forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def layer_sqnr(float_model: nn.Module, qmodel: nn.Module, images: torch.Tensor, *,
               batch_size: int = 4) -> dict[str, float]:
    """SQNR in dB, ``10 log10(sum ref^2 / sum (ref - out)^2)`` over all images, of every quantized op's output.

    Args:
        float_model: the float model ``qmodel`` was quantized from (left unchanged).
        qmodel: the quantized model (``vitq.quantize`` + ``calibrate``, frozen or not).
        images: preprocessed images ``(N, C, H, W)``; a few calibration images are enough.
        batch_size: images per forward; memory holds every op output of one float batch.

    Returns:
        ``{op name: dB}`` in the quantized model's op order; ``inf`` where the outputs are identical
        (quantization disabled), ``nan`` for an op whose float counterpart produced no tensor.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise VitqError(f"layer_sqnr: images must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    info = get_quant_info(qmodel)
    ref = _float_reference(float_model, qmodel)
    q_ops = quant_ops(qmodel)
    ref_mods = dict(ref.named_modules())
    names = [n for n in q_ops if n in ref_mods]
    signal = dict.fromkeys(q_ops, 0.0)
    noise = dict.fromkeys(q_ops, 0.0)
    seen: set[str] = set()
    device = next(qmodel.parameters()).device
    ref.to(device)
    was_training = qmodel.training
    qmodel.eval()
    ref.eval()
    for batch in images.split(batch_size):
        batch = batch.to(device)
        r_out = _outputs_of(ref, {n: ref_mods[n] for n in names}, info.forward, batch)
        q_out = _outputs_of(qmodel, {n: q_ops[n] for n in names}, info.forward, batch)
        for n in names:
            rs, qs = r_out.get(n, []), q_out.get(n, [])
            if not rs or len(rs) != len(qs):
                continue
            seen.add(n)
            for r, q in zip(rs, qs):
                r64 = r.double()
                signal[n] += r64.pow(2).sum().item()
                noise[n] += (r64 - q.double()).pow(2).sum().item()
    qmodel.train(was_training)
    out = {}
    for n in q_ops:
        if n not in seen:
            out[n] = math.nan
        elif noise[n] == 0:
            out[n] = math.inf
        elif signal[n] == 0:
            out[n] = -math.inf
        else:
            out[n] = 10 * math.log10(signal[n] / noise[n])
    return out

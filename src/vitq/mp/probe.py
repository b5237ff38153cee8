"""A cheaply calibrated quantized copy of a model whose units can be switched on at any bit-width.

Sensitivity search quantizes one unit (or a whole candidate plan) many times. Doing the full interval
search each time would cost as much as calibration itself, so the probe calibrates once with a cheap
recipe (``minmax`` or ``percentile``) at a reference bit-width and keeps each quantizer's range
``r = scale x qmax``. Both recipes set ``scale = r / qmax(b)`` with ``r`` independent of b, so setting a
bit-width b just rescales: the same interval those recipes would have found at b.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from vitq.errors import ConfigError
from vitq.nn.qops import quant_ops

CHEAP_INITS = ("minmax", "percentile")


class QuantProbe:
    """Quantized copy of ``model`` with cheap intervals; every op starts disabled (float).

    Args:
        model: the float model.
        images: calibration images ``(N, C, H, W)``, preprocessed.
        init: ``"minmax"`` or ``"percentile"``.
        ref_bits: the bit-width the cheap calibration runs at (its propagated activations are that precise).
        per_channel_weights, quantize_head, batch_size, seed: as in :class:`vitq.QuantConfig`.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, *, init: str = "percentile", ref_bits: int = 8,
                 per_channel_weights: bool = False, quantize_head: bool = False, batch_size: int = 32,
                 seed: int = 0):
        import vitq

        if init not in CHEAP_INITS:
            raise ConfigError(f"init={init!r}: the sensitivity search calibrates with one of {', '.join(CHEAP_INITS)}")
        cfg = vitq.QuantConfig(w_bits=ref_bits, a_bits=ref_bits, method=init, per_channel_weights=per_channel_weights,
                               quantize_head=quantize_head, batch_size=batch_size, seed=seed)
        self.qmodel = vitq.quantize(model, cfg)
        vitq.calibrate(self.qmodel, images, progress=False)
        self.info = vitq.get_quant_info(self.qmodel)
        self.ops = quant_ops(self.qmodel)
        self._range = {n: tuple(q.scale.detach().clone() * q.qmax for q in op.quantizers())
                       for n, op in self.ops.items()}
        self.enable_all(False)

    def set_bits(self, names: Iterable[str], bits: int, enabled: bool | None = None) -> None:
        """Give ops one bit-width for weights and inputs (the paper's unit rule), rescaling their intervals."""
        for n in names:
            op = self.ops[n]
            op.set_bits(bits, bits)
            for q, r in zip(op.quantizers(), self._range[n]):
                q.scale.copy_(r / q.qmax)
            if enabled is not None:
                op.set_enabled(enabled)

    def enable(self, names: Iterable[str], enabled: bool = True) -> None:
        for n in names:
            self.ops[n].set_enabled(enabled)

    def enable_all(self, enabled: bool) -> None:
        for op in self.ops.values():
            op.set_enabled(enabled)

    def forward(self, images: torch.Tensor):
        return self.info.forward(self.qmodel, images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from vitq.eval.metrics import logits_of

        return logits_of(self.forward(images)).float()

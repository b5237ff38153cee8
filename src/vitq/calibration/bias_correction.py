"""Bias correction (Liu et al. Eq. 13-15).

Quantization shifts the mean of each output unit by E[eps^W X] + E[eps^X W] + E[eps^X eps^W]
(Eq. 15). That expected error, measured on the calibration data, is subtracted from the layer's bias,
so the mean of every output channel is preserved. It is recomputed from the original float bias after
every search round, so corrections never accumulate.
"""

from __future__ import annotations

import torch


def expected_output_error(out_q: torch.Tensor, out_f: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """E[O_hat - O] per output channel, averaging over every other dimension (samples, tokens, pixels)."""
    d = (out_q - out_f).double()
    dims = [i for i in range(d.dim()) if i != channel_dim % d.dim()]
    return d.mean(dim=dims)


def corrected_bias(original_bias: torch.Tensor, current_bias: torch.Tensor, mean_error_with_current: torch.Tensor) -> torch.Tensor:
    """New bias b0 - E[O_hat_nobias - O_nobias], given the mean error measured with ``current_bias`` in place."""
    error_without_bias = mean_error_with_current - (current_bias.double() - original_bias.double())
    return (original_bias.double() - error_without_bias).to(original_bias.dtype)

"""What every data source returns (:class:`ImageSet`) and the seeded sample they draw from a larger set.

The bottom of :mod:`vitq.data`: the sources (:mod:`~vitq.data.hf_datasets`,
:mod:`~vitq.data.foolbox_samples`, ...) import it, and :mod:`~vitq.data.sources` imports them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from vitq.errors import CalibrationDataError

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W), preprocessed for the model
    labels: torch.Tensor | None
    source: str
    #: images over every rank when this set is one rank's block (``load_images(..., shard=True)``), else None
    total: int | None = None

    @property
    def num_total(self) -> int:
        """Images in the whole sample (every rank's block)."""
        return self.images.shape[0] if self.total is None else self.total


def subsample(n_total: int, num: int | None, seed: int, source: object = None) -> list[int] | None:
    """Sorted indices of a seeded random sample of ``num`` of ``n_total`` items; None for all of them (``num``
    None or at least ``n_total``). Every source samples through here, so asking for more images than a
    source holds always logs a warning naming ``source``."""
    if num is not None and num > n_total:
        log.warning("asked for %d images but the source holds %d%s: using all %d", num, n_total,
                    f" ({source})" if source is not None else "", n_total)
    if num is None or num >= n_total:
        return None
    if num < 1:
        raise CalibrationDataError(f"asked for {num} images: ask for at least one")
    return sorted(random.Random(seed).sample(range(n_total), num))

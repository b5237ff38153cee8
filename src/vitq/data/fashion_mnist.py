"""Fashion-MNIST: the full Debian-packaged data set and a small subset shipped with vitq.

The full data set comes from the Debian package ``dataset-fashion-mnist``: the IDX files are looked for
in ``$VITQ_FMNIST_DIR``, then :data:`FASHION_MNIST_DIR` (the installed package), then the package unpacked
without root by ``scripts/setup_fmnist.sh`` under ``<cache>/fmnist-deb`` (:func:`fashion_mnist_dirs`). The
shipped subset (``vitq/assets/fmnist_subset``, written by
``scripts/make_fmnist_subset.py``) holds 1,024 calibration images drawn from the train split and the
first 2,000 test images, so calibration and tests run without the package.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from vitq.data.idx import read_idx
from vitq.errors import CalibrationDataError, ConfigError, DataFormatError

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

SUBSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "fmnist_subset"

_FULL_PREFIX = {"train": "train", "test": "t10k"}
_SUBSET_PREFIX = {"calib": "calib", "test": "test"}

_INSTALL_HINT = (
    "run scripts/setup_fmnist.sh (`make bench-setup`), or install the Debian package with "
    "`apt-get install dataset-fashion-mnist`, or without root: `apt-get download dataset-fashion-mnist && "
    "dpkg -x dataset-fashion-mnist_*.deb DEST` and set VITQ_FMNIST_DIR=DEST/usr/share/datasets/fashion-mnist"
)
FMNIST_DEB_SUBDIR = "fmnist-deb"  # under the cache directory, where setup_fmnist.sh unpacks the .deb
_DEB_PATH = Path("usr/share/datasets/fashion-mnist")  # where the .deb puts the files


def fashion_mnist_dirs() -> list[Path]:
    """Where the full data set is looked for, in order: ``$VITQ_FMNIST_DIR`` (when set),
    :data:`FASHION_MNIST_DIR`, and ``<cache>/fmnist-deb/usr/share/datasets/fashion-mnist``."""
    from vitq.utils.cache import default_cache_dir

    dirs = [Path(os.environ["VITQ_FMNIST_DIR"])] if os.environ.get("VITQ_FMNIST_DIR") else []
    dirs.append(FASHION_MNIST_DIR)
    dirs.append(default_cache_dir() / FMNIST_DEB_SUBDIR / _DEB_PATH)
    return dirs


def find_fashion_mnist_dir(split: str = "train") -> Path | None:
    """The first of :func:`fashion_mnist_dirs` that holds both IDX files of ``split``; None if none does."""
    prefix = _FULL_PREFIX[split]
    for d in fashion_mnist_dirs():
        if _find(d, f"{prefix}-images-idx3-ubyte") and _find(d, f"{prefix}-labels-idx1-ubyte"):
            return d
    return None


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _load_pair(root: Path, prefix: str, missing_hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    img_path, lbl_path = _find(root, img_stem), _find(root, lbl_stem)
    missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
    if missing:
        raise CalibrationDataError(
            f"Fashion-MNIST files {', '.join(m + '[.gz]' for m in missing)} not found in {root}; {missing_hint}"
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataFormatError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28), found {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            f"{lbl_path}: expected {images.shape[0]} labels to match {img_path.name}, found shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise DataFormatError(f"{lbl_path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    logger.debug("loaded %d Fashion-MNIST images from %s", images.shape[0], img_path)
    return (
        torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a full Fashion-MNIST split.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: directory with the IDX files (``.gz`` or plain); defaults to the first directory of
            :func:`fashion_mnist_dirs` that has them.

    Returns:
        ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` and int64 ``(N,)``.

    Raises:
        ConfigError: unknown split.
        CalibrationDataError: the files are missing (the message says how to install them).
        DataFormatError: a file is malformed.
    """
    if split not in _FULL_PREFIX:
        raise ConfigError(f"unknown Fashion-MNIST split {split!r}; valid: {', '.join(_FULL_PREFIX)}")
    if root is None:
        found = find_fashion_mnist_dir(split)
        if found is None:
            searched = ", ".join(str(d) for d in fashion_mnist_dirs())
            raise CalibrationDataError(f"Fashion-MNIST {split} files not found in any of {searched}; {_INSTALL_HINT}")
        root = found
    return _load_pair(Path(root), _FULL_PREFIX[split], _INSTALL_HINT)


def load_fmnist_subset(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the Fashion-MNIST subset shipped in the package.

    Args:
        split: ``"calib"`` (1,024 images drawn from the train split with seed 0) or ``"test"``
            (the first 2,000 test images).

    Returns:
        ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` and int64 ``(N,)``.
    """
    if split not in _SUBSET_PREFIX:
        raise ConfigError(f"unknown Fashion-MNIST subset split {split!r}; valid: {', '.join(_SUBSET_PREFIX)}")
    hint = "the package assets are incomplete; regenerate them with scripts/make_fmnist_subset.py"
    return _load_pair(SUBSET_DIR, _SUBSET_PREFIX[split], hint)

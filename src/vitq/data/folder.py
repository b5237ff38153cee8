"""Image folders: a flat folder of images (unlabelled calibration) or an ImageNet-style ImageFolder
(one sub-folder per class, labels from sorted class names)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vitq.data.imageset import subsample
from vitq.data.transforms import DataConfig, preprocess_image
from vitq.errors import CalibrationDataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageList:
    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None


def scan_folder(root: str | Path) -> ImageList:
    """List the images under ``root``: ImageFolder layout (class sub-folders) or a flat folder.

    Raises:
        CalibrationDataError: the folder does not exist or contains no image files.
    """
    root = Path(root)
    if not root.is_dir():
        raise CalibrationDataError(f"image folder {root} does not exist or is not a directory")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_dirs = [d for d in subdirs if any(_is_image(f) for f in d.rglob("*"))]
    if class_dirs:
        paths, labels = [], []
        for idx, d in enumerate(class_dirs):
            for f in sorted(d.rglob("*")):
                if _is_image(f):
                    paths.append(f)
                    labels.append(idx)
        return ImageList(paths, labels, [d.name for d in class_dirs])
    paths = sorted(f for f in root.iterdir() if _is_image(f))
    if not paths:
        raise CalibrationDataError(
            f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files, flat or in class sub-folders)"
        )
    return ImageList(paths, None, None)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def load_image(path: Path, cfg: DataConfig) -> torch.Tensor:
    """Read and preprocess one image; an unreadable file raises :class:`CalibrationDataError` naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return preprocess_image(img, cfg)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CalibrationDataError(f"cannot read image {path}: {e}") from e


def load_folder(root: str | Path, cfg: DataConfig, *, num: int | None = None, seed: int = 0, block=None
                ) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Load up to ``num`` images (a seeded random sample when the folder holds more) as one tensor; a
    folder holding fewer than ``num`` logs a warning and gives all it has. ``block(n)`` (a range of
    ``0..n-1``, e.g. :func:`vitq.distributed.shard_range`) decodes only that block of the ``n`` sampled images.

    Returns:
        ``(images (N, C, H, W), labels (N,) or None, class names or None)``.
    """

    lst = scan_folder(root)
    idx = subsample(len(lst.paths), num, seed, f"image folder {root}")  # warns if it holds fewer than num
    if idx is None:
        idx = list(range(len(lst.paths)))
    if block is not None:
        r = block(len(idx))
        idx = idx[r.start: r.stop]
    images = torch.stack([load_image(lst.paths[i], cfg) for i in idx])
    labels = torch.tensor([lst.labels[i] for i in idx]) if lst.labels is not None else None
    log.info("loaded %d images from %s", len(idx), root)
    return images, labels, lst.classes

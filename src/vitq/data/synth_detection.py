"""A synthetic detection set made of real images: Fashion-MNIST objects pasted on cluttered canvases.

Each canvas (grayscale, ``canvas`` px square) holds ``min_objects..max_objects`` Fashion-MNIST items,
each resized to ``min_size..max_size`` px (aspect jitter ±25%) and pasted (pixel-wise max) at a random
position where it overlaps earlier objects by at most ``max_iou``; its box is the tight box of its
visible pixels (value > ``BOX_THRESHOLD``) and its class is the Fashion-MNIST label. Clutter: a noisy
background of random brightness, random lines, and small fragments (at most ``clutter_size`` px) cut
from other images of the same split, which are not objects.

The splits never share a source image: ``train`` draws from Fashion-MNIST train images 0..49,999,
``val`` from train images 50,000..59,999, ``test`` from the 10,000 test images.
:func:`write_coco_split` writes a split as a folder of PNG files and a COCO ``instances.json``
(category ids 1..10 in Fashion-MNIST label order), which :mod:`vitq.data.coco` reads back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitq.errors import ConfigError

logger = logging.getLogger(__name__)

#: a pixel of a pasted object counts as visible (for its box) above this value (0..255)
BOX_THRESHOLD = 24
#: where each split's source images come from: (Fashion-MNIST split, first index, end index)
SPLIT_SOURCES = {"train": ("train", 0, 50_000), "val": ("train", 50_000, 60_000), "test": ("test", 0, 10_000)}
#: bump when the generator's output changes, so cached splits are rebuilt
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthSpec:
    """How canvases are drawn. Sizes in pixels of the square canvas."""

    canvas: int = 128
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 24
    max_size: int = 56
    max_iou: float = 0.2
    clutter_fragments: int = 4
    clutter_size: int = 10
    clutter_lines: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 8 <= self.min_size <= self.max_size <= self.canvas:
            raise ConfigError(f"need 8 <= min_size <= max_size <= canvas, got {self.min_size}, {self.max_size}, "
                              f"{self.canvas}")


def _resize(obj: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(obj).float()[None, None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].clamp(0, 255).round().to(torch.uint8).numpy()


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two boxes (x0, y0, x1, y1), exclusive ends."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def draw_canvas(rng: np.random.Generator, pool: np.ndarray, labels: np.ndarray,
                spec: SynthSpec = SynthSpec()) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One canvas.

    Args:
        rng: the generator every random choice is drawn from.
        pool: uint8 ``(N, 28, 28)`` source images of one split; labels: int ``(N,)`` their classes (0..9).

    Returns:
        ``(image, objects)``: uint8 ``(canvas, canvas)``; per object ``([x, y, w, h], label)`` with the box
        in pixels (COCO convention: top-left corner, width, height).
    """
    c = spec.canvas
    img = rng.normal(rng.uniform(0, 40), rng.uniform(2, 10), size=(c, c)).clip(0, 255)
    for _ in range(rng.integers(0, spec.clutter_lines + 1)):
        x0, y0, x1, y1 = rng.integers(0, c, size=4)
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs, ys = np.linspace(x0, x1, n).round().astype(int), np.linspace(y0, y1, n).round().astype(int)
        img[ys, xs] = np.maximum(img[ys, xs], rng.uniform(60, 160))
    for _ in range(rng.integers(0, spec.clutter_fragments + 1)):
        src = pool[rng.integers(len(pool))]
        fs = int(rng.integers(4, spec.clutter_size + 1))
        fy, fx = rng.integers(0, 28 - fs + 1, size=2)
        frag = src[fy:fy + fs, fx:fx + fs].astype(np.float64) * rng.uniform(0.4, 0.9)
        y, x = rng.integers(0, c - fs + 1, size=2)
        img[y:y + fs, x:x + fs] = np.maximum(img[y:y + fs, x:x + fs], frag)

    boxes: list[tuple[int, int, int, int]] = []
    objects: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        for _attempt in range(30):
            i = int(rng.integers(len(pool)))
            size = rng.uniform(spec.min_size, spec.max_size)
            aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
            h = int(np.clip(round(size * np.sqrt(aspect)), 8, c))
            w = int(np.clip(round(size / np.sqrt(aspect)), 8, c))
            obj = _resize(pool[i], h, w).astype(np.float64) * rng.uniform(0.75, 1.0)
            ys, xs = np.nonzero(obj > BOX_THRESHOLD)
            if len(ys) == 0:
                continue
            y, x = int(rng.integers(0, c - h + 1)), int(rng.integers(0, c - w + 1))
            box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
            if box[2] - box[0] < 4 or box[3] - box[1] < 4 or any(_iou(box, b) > spec.max_iou for b in boxes):
                continue
            img[y:y + h, x:x + w] = np.maximum(img[y:y + h, x:x + w], obj)
            boxes.append(box)
            objects.append(([float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                            int(labels[i])))
            break
    return img.round().astype(np.uint8), objects


def split_pool(split: str, fmnist_root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST source images and labels of one split (see :data:`SPLIT_SOURCES`)."""
    from vitq.data.fashion_mnist import load_fashion_mnist

    if split not in SPLIT_SOURCES:
        raise ConfigError(f"unknown synthetic split {split!r}; valid: {', '.join(SPLIT_SOURCES)}")
    fm_split, start, end = SPLIT_SOURCES[split]
    images, labels = load_fashion_mnist(fm_split, root=fmnist_root)
    return images[start:end, 0].numpy(), labels[start:end].numpy()


def coco_categories() -> list[dict]:
    from vitq.data.fashion_mnist import FASHION_MNIST_CLASSES

    return [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(FASHION_MNIST_CLASSES)]


def write_coco_split(out_dir: str | Path, split: str, num: int, *, seed: int = 0, spec: SynthSpec = SynthSpec(),
                     pool: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Draw ``num`` canvases of ``split`` and write them as ``out_dir/images/*.png`` and
    ``out_dir/instances.json`` (COCO instances format). Returns ``out_dir``. ``pool`` overrides the split's
    Fashion-MNIST images (tests)."""
    from PIL import Image

    images, labels = pool if pool is not None else split_pool(split)
    seed_offset = {"train": 0, "val": 1, "test": 2}.get(split, 3)
    rng = np.random.default_rng([seed, seed_offset])
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco: dict = {"info": {"description": f"vitq synthetic Fashion-MNIST detection, split {split}",
                           "generator_version": GENERATOR_VERSION, "seed": seed, "spec": asdict(spec)},
                  "images": [], "annotations": [], "categories": coco_categories()}
    ann_id = 1
    for k in range(num):
        img, objects = draw_canvas(rng, images, labels, spec)
        name = f"{split}_{k:06d}.png"
        Image.fromarray(img, mode="L").save(out / "images" / name)
        coco["images"].append({"id": k + 1, "file_name": name, "width": spec.canvas, "height": spec.canvas})
        for box, label in objects:
            coco["annotations"].append({"id": ann_id, "image_id": k + 1, "category_id": label + 1, "bbox": box,
                                        "area": box[2] * box[3], "iscrowd": 0})
            ann_id += 1
    (out / "instances.json").write_text(json.dumps(coco))
    logger.info("wrote %d %s canvases with %d objects to %s", num, split, ann_id - 1, out)
    return out


def synth_split_dir(split: str, num: int, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The cached COCO folder of a split (``<cache>/detr-synth/v<version>-<split>-<num>-s<seed>``), written on
    first use from the full Fashion-MNIST."""
    from vitq.utils.cache import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "detr-synth"
    out = root / f"v{GENERATOR_VERSION}-{split}-{num}-s{seed}"
    if not (out / "instances.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        write_coco_split(tmp, split, num, seed=seed)
        tmp.rename(out)
    return out

"""COCO-format detection data: an image folder plus an instances JSON (``coco:`` sources).

Source names (see :func:`parse_coco_source`):

- ``coco:DIR``: ``DIR/instances.json`` and the images under ``DIR/images/`` (the layout
  :func:`vitq.data.synth_detection.write_coco_split` writes);
- ``coco:IMAGE_DIR:ANNOTATIONS.json``: e.g. ``coco:val2017:annotations/instances_val2017.json``;
- ``detr-synth:val`` / ``detr-synth:test``: the synthetic Fashion-MNIST detection splits of the
  ``detr-synth`` zoo model (500 / 1,000 canvases, generated once into the cache).

Everything that would make the mAP silently wrong is an error naming what is wrong: an annotation file
that does not match the images (listed files missing, sizes that differ from the JSON), annotations of
unknown images or categories, boxes that are not 4 finite numbers with positive width and height.
Images with no objects are kept and evaluated as COCOeval does (their detections are false positives).

Preprocessing: with ``shortest_edge`` / ``longest_edge`` in the model's ``DataConfig.extra`` (the published
DETR checkpoints: 800 / 1333) images are resized keeping their aspect ratio as DETR's image processor does;
otherwise they are used at their own size. They are normalised, zero-padded at the bottom and right to the
largest image, and, when any padding was needed, carry the pixel mask as one extra channel
(:func:`vitq.models.hf_detr.pack_pixel_mask` layout), which the DETR adapter hands to the model. The whole
set is held in memory: use ``num`` for large sets.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vitq.data.imageset import subsample
from vitq.data.transforms import _RESAMPLE, DataConfig
from vitq.errors import CalibrationDataError, DataFormatError

logger = logging.getLogger(__name__)

SYNTH_SPLIT_SIZES = {"val": 500, "test": 1000}


@dataclass
class DetectionSet:
    """Preprocessed detection images and their COCO ground truth.

    Attributes:
        images: ``(N, C, H, W)``, or ``(N, C + 1, H, W)`` with the pixel mask as last channel when padded.
        image_ids: COCO id of each image; sizes: its ``(height, width)`` as annotated (boxes are in these
            pixels).
        gt: the instances dict, restricted to the loaded images.
        category_ids: the COCO category id of each model class (sorted ids: class k is the k-th).
    """

    images: torch.Tensor
    image_ids: list[int]
    sizes: list[tuple[int, int]]
    gt: dict
    category_ids: list[int]
    source: str

    @property
    def labels(self) -> None:  # an ImageSet-like view: detection sets carry no class labels per image
        return None

    @property
    def num_objects(self) -> int:
        return len(self.gt["annotations"])


def parse_coco_source(source: str) -> tuple[Path, Path]:
    """``(image_dir, annotation_file)`` of a ``coco:`` or ``detr-synth:`` source name."""
    if source.startswith("detr-synth:"):
        from vitq.data.synth_detection import synth_split_dir

        split = source.split(":", 1)[1]
        if split not in SYNTH_SPLIT_SIZES:
            raise CalibrationDataError(f"{source!r}: split must be one of {', '.join(SYNTH_SPLIT_SIZES)}")
        d = synth_split_dir(split, SYNTH_SPLIT_SIZES[split])
        return d / "images", d / "instances.json"
    if not source.startswith("coco:"):
        raise CalibrationDataError(f"{source!r} is not a coco: source")
    rest = source[len("coco:"):]
    if ":" in rest:
        img_dir, ann = rest.split(":", 1)
        img_dir, ann = Path(img_dir), Path(ann)
    else:
        img_dir, ann = Path(rest) / "images", Path(rest) / "instances.json"
    if not ann.is_file():
        raise CalibrationDataError(f"{source}: annotation file {ann} not found (give coco:DIR with DIR/instances.json "
                                   "and DIR/images/, or coco:IMAGE_DIR:ANNOTATIONS.json)")
    if not img_dir.is_dir():
        raise CalibrationDataError(f"{source}: image folder {img_dir} not found")
    return img_dir, ann


def _bad_box(bbox) -> bool:
    return (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0)


def validate_instances(coco: dict, where: str) -> None:
    """Raise :class:`DataFormatError` for an instances dict that cannot give a correct mAP."""
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)]
    if missing:
        raise DataFormatError(f"{where}: not a COCO instances file (missing lists {missing})")
    if not coco["categories"]:
        raise DataFormatError(f"{where}: no categories")
    ids = [im.get("id") for im in coco["images"]]
    if len(set(ids)) != len(ids):
        raise DataFormatError(f"{where}: duplicate image ids")
    for im in coco["images"]:
        if not all(k in im for k in ("id", "file_name", "width", "height")):
            raise DataFormatError(f"{where}: image entry {im} lacks id, file_name, width or height")
    known_imgs, known_cats = set(ids), {c["id"] for c in coco["categories"]}
    orphan = [a["id"] for a in coco["annotations"] if a.get("image_id") not in known_imgs]
    if orphan:
        raise DataFormatError(f"{where}: {len(orphan)} annotations refer to images not in the file (ids {orphan[:5]})")
    bad_cat = [a["id"] for a in coco["annotations"] if a.get("category_id") not in known_cats]
    if bad_cat:
        raise DataFormatError(f"{where}: {len(bad_cat)} annotations have a category id not among "
                              f"{sorted(known_cats)} (annotation ids {bad_cat[:5]})")
    bad = [a.get("id") for a in coco["annotations"] if _bad_box(a.get("bbox"))]
    if bad:
        raise DataFormatError(f"{where}: {len(bad)} annotations have degenerate boxes (not [x, y, w, h] with finite "
                              f"values and w, h > 0; annotation ids {bad[:5]})")


def _target_size(h: int, w: int, cfg: DataConfig) -> tuple[int, int]:
    short, long_ = cfg.extra.get("shortest_edge"), cfg.extra.get("longest_edge")
    if not short:
        return h, w
    scale = short / min(h, w)
    if long_ and max(h, w) * scale > long_:
        scale = long_ / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def load_coco(source: str, cfg: DataConfig, *, num: int | None = None, seed: int = 0) -> DetectionSet:
    """Load ``num`` images (seeded sample; all when ``None``) of a ``coco:``/``detr-synth:`` source with their
    ground truth, preprocessed for a model expecting ``cfg`` (see the module docstring)."""
    img_dir, ann = parse_coco_source(source)
    try:
        coco = json.loads(ann.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{ann}: not valid JSON: {e}") from e
    validate_instances(coco, str(ann))
    entries = sorted(coco["images"], key=lambda im: im["id"])
    absent = [im["file_name"] for im in entries if not (img_dir / im["file_name"]).is_file()]
    if absent:
        raise DataFormatError(f"{ann} does not match {img_dir}: {len(absent)} of {len(entries)} listed images are "
                              f"missing (first: {absent[:3]})")
    if not entries:
        raise CalibrationDataError(f"{ann} lists no images")
    idx = subsample(len(entries), num, seed, source)
    if idx is not None:
        entries = [entries[i] for i in idx]
    c = cfg.input_size[0]
    mean = torch.tensor(cfg.mean[:c]).view(-1, 1, 1)
    std = torch.tensor(cfg.std[:c]).view(-1, 1, 1)
    tensors = []
    for im in entries:
        with Image.open(img_dir / im["file_name"]) as pil:
            if pil.size != (im["width"], im["height"]):
                raise DataFormatError(f"{ann} does not match {img_dir}: {im['file_name']} is {pil.size[0]}x{pil.size[1]} "
                                      f"but the annotations say {im['width']}x{im['height']}")
            pil = pil.convert("L" if c == 1 else "RGB")
            h, w = _target_size(im["height"], im["width"], cfg)
            if (h, w) != (im["height"], im["width"]):
                pil = pil.resize((w, h), _RESAMPLE.get(cfg.interpolation, Image.BILINEAR))
            x = torch.frombuffer(bytearray(pil.tobytes()), dtype=torch.uint8).reshape(h, w, -1)
        tensors.append((x.permute(2, 0, 1).float().div_(255.0) - mean) / std)
    H, W = max(t.shape[1] for t in tensors), max(t.shape[2] for t in tensors)
    padded = any(t.shape[1:] != (H, W) for t in tensors)
    images = torch.zeros(len(tensors), c + int(padded), H, W)
    for i, t in enumerate(tensors):
        images[i, :c, : t.shape[1], : t.shape[2]] = t
        if padded:
            images[i, c, : t.shape[1], : t.shape[2]] = 1.0
    ids = {im["id"] for im in entries}
    gt = {**coco, "images": entries, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    n_empty = len(ids - {a["image_id"] for a in gt["annotations"]})
    if n_empty:
        logger.info("%s: %d of %d images have no objects (evaluated as COCOeval does)", source, n_empty, len(ids))
    logger.debug("loaded %d images (%s, padded=%s) from %s", len(entries), tuple(images.shape), padded, source)
    return DetectionSet(images, [im["id"] for im in entries], [(im["height"], im["width"]) for im in entries], gt,
                        sorted(c_["id"] for c_ in coco["categories"]), source)

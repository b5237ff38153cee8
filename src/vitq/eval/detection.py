"""Detection metrics: DETR outputs to COCO detections, and COCO mAP through ``pycocotools`` (COCOeval).

The mAP is COCOeval's, never a home-made AP: ``map`` is AP@[.50:.95] (all areas, 100 detections per
image), ``map50`` AP@.50, ``map75`` AP@.75. pycocotools prints its progress to stdout; that goes to the
debug log instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vitq.errors import DataFormatError

logger = logging.getLogger(__name__)

#: names of COCOeval's 12 summary statistics, in ``COCOeval.stats`` order
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("COCO mAP needs pycocotools: pip install 'vitq[detection]' (or pycocotools)") from e
    return COCO, COCOeval


@contextlib.contextmanager
def _quiet():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        logger.debug("pycocotools: %s", buf.getvalue().strip())


def coco_from_dict(dataset: dict):
    """A ``pycocotools.coco.COCO`` ground truth built from an instances dict (no file needed)."""
    COCO, _ = _require_pycocotools()
    with _quiet():
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
    return gt


def detr_detections(logits: torch.Tensor, pred_boxes: torch.Tensor, image_ids: Sequence[int],
                    sizes: Sequence[tuple[int, int]], category_ids: Sequence[int]) -> list[dict]:
    """COCO result dicts from DETR outputs, one detection per query (DETR's post-processing).

    Args:
        logits: ``(B, Q, K+1)``, the last class being "no object".
        pred_boxes: ``(B, Q, 4)`` normalised ``(cx, cy, w, h)`` relative to each image's *unpadded* size.
        image_ids: COCO image id of each of the B images.
        sizes: ``(height, width)`` in pixels of each image as annotated.
        category_ids: COCO category id of each of the K model classes.

    Each query gives its most probable real class, scored by that class's softmax probability; the box is
    converted to ``[x, y, w, h]`` in pixels.
    """
    if logits.shape[-1] != len(category_ids) + 1:
        raise DataFormatError(f"the detector predicts {logits.shape[-1] - 1} classes (+ no-object) but "
                              f"{len(category_ids)} category ids were given (see model_category_ids)")
    probs = logits.float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    out = []
    for b, image_id in enumerate(image_ids):
        h, w = sizes[b]
        cx, cy, bw, bh = pred_boxes[b].float().unbind(-1)
        xywh = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h], -1)
        for q in range(logits.shape[1]):
            out.append({"image_id": int(image_id), "category_id": int(category_ids[int(labels[b, q])]),
                        "bbox": [round(float(v), 3) for v in xywh[q]], "score": float(scores[b, q])})
    return out


@dataclass
class DetectionMetrics:
    """COCOeval's summary (fractions 0..1) and how many images and objects it was computed on."""

    stats: dict[str, float]
    num_images: int
    num_objects: int

    @property
    def map(self) -> float:
        return self.stats["map"]

    @property
    def map50(self) -> float:
        return self.stats["map50"]


def coco_map(gt, detections: list[dict], image_ids: Sequence[int] | None = None) -> DetectionMetrics:
    """COCO mAP of ``detections`` against the ground truth ``gt`` (a ``COCO`` object or an instances dict).

    ``image_ids`` restricts the evaluation to those images (default: every image of ``gt``). Detections
    on images that are not in ``gt`` are an error (a mismatched annotation file would otherwise give a
    silently wrong mAP). Images without objects are evaluated as COCOeval does (their detections are false
    positives). No detection at all gives mAP 0, as no ground truth at all gives mAP -1 in COCOeval; the
    latter is an error here.
    """
    _, COCOeval = _require_pycocotools()
    if isinstance(gt, dict):
        gt = coco_from_dict(gt)
    ids = sorted(gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    known = set(gt.getImgIds())
    unknown = sorted({int(d["image_id"]) for d in detections} - known) + sorted(set(ids) - known)
    if unknown:
        raise DataFormatError(f"{len(unknown)} image ids are not in the annotations (first: {unknown[:5]}): "
                              "the detections or the image list do not belong to this annotation file")
    num_objects = len(gt.getAnnIds(imgIds=ids, iscrowd=False))
    if num_objects == 0:
        raise DataFormatError(f"the {len(ids)} evaluated images hold no annotated object: mAP is undefined")
    dets = [d for d in detections if int(d["image_id"]) in set(ids)]
    if not dets:
        logger.warning("no detections on %d images: mAP 0", len(ids))
        return DetectionMetrics(dict.fromkeys(COCO_STATS, 0.0), len(ids), num_objects)
    with _quiet():
        res = gt.loadRes(dets)
        ev = COCOeval(gt, res, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return DetectionMetrics({k: float(v) for k, v in zip(COCO_STATS, ev.stats)}, len(ids), num_objects)


def model_category_ids(num_classes: int, category_ids: Sequence[int]) -> list[int]:
    """The COCO category id of each of a detector's ``num_classes`` classes.

    A model with one class per category (vitq's synthetic set, a model trained on a remapped set) reads
    them in sorted order; a model with more classes than the largest category id (the published DETR
    checkpoints: 91 classes indexed by COCO category id, gaps included) uses the class index as the id.
    Anything else cannot be matched to the annotations and is an error.
    """
    cats = sorted(int(c) for c in category_ids)
    if num_classes == len(cats):
        return cats
    if num_classes > max(cats):
        return list(range(num_classes))
    raise DataFormatError(f"the detector predicts {num_classes} classes but the annotations have {len(cats)} "
                          f"categories with ids up to {max(cats)}: cannot tell which class is which category")


@torch.no_grad()
def predict_detections(model, images: torch.Tensor, image_ids: Sequence[int], sizes: Sequence[tuple[int, int]],
                       category_ids: Sequence[int], *, forward=None, batch_size: int = 16, progress: bool = False,
                       desc: str = "eval") -> list[dict]:
    """COCO detections of a DETR-style detector (outputs with ``logits`` and ``pred_boxes``) on ``images``.

    ``forward(model, batch)`` runs a batch (default ``model(batch)``; a quantized model's
    ``vitq_info.forward`` unpacks a pixel-mask channel). Raises :class:`UnsupportedModelError` for a model
    whose outputs are not DETR's and :class:`NonFiniteError` for NaN/inf outputs.
    """
    from tqdm.auto import tqdm

    from vitq.errors import NonFiniteError, UnsupportedModelError

    model.eval()
    device = next(model.parameters()).device
    dets: list[dict] = []
    start = 0
    cats = None
    for b in tqdm(images.split(batch_size), desc=desc, unit="batch", disable=not progress):
        out = forward(model, b.to(device)) if forward else model(b.to(device))
        logits, boxes = getattr(out, "logits", None), getattr(out, "pred_boxes", None)
        if not isinstance(logits, torch.Tensor) or not isinstance(boxes, torch.Tensor) or logits.dim() != 3:
            raise UnsupportedModelError(f"{type(model).__name__} is not a DETR-style detector: its output "
                                        f"{type(out).__name__} has no (B, queries, classes) logits and pred_boxes")
        if not (torch.isfinite(logits).all() and torch.isfinite(boxes).all()):
            raise NonFiniteError(f"{desc}: non-finite detector outputs in images {start}..{start + b.shape[0] - 1}; "
                                 "no mAP is computed from them")
        if cats is None:
            cats = model_category_ids(logits.shape[-1] - 1, category_ids)
        n = b.shape[0]
        dets += detr_detections(logits.cpu(), boxes.cpu(), image_ids[start:start + n], sizes[start:start + n], cats)
        start += n
    return dets


def evaluate_detection(model, dset, *, forward=None, batch_size: int = 16, progress: bool = False,
                       desc: str = "eval") -> DetectionMetrics:
    """COCO mAP of a detector on a :class:`vitq.data.coco.DetectionSet`."""
    dets = predict_detections(model, dset.images, dset.image_ids, dset.sizes, dset.category_ids, forward=forward,
                              batch_size=batch_size, progress=progress, desc=desc)
    return coco_map(dset.gt, dets, dset.image_ids)


def detection_summary(model, qmodel, dset, *, batch_size: int = 16, progress: bool = True) -> dict:
    """``vitq eval`` / ``vitq quantize`` figures on a detection set: ``map``/``map50`` of the quantized model
    (``qmodel``, may be None) and ``map_float``/``map50_float`` of the float one (``model``, may be None)."""
    from vitq.models.base import get_adapter

    res: dict = {"task": "detection", "num_test": len(dset.image_ids), "num_objects": dset.num_objects}
    if model is not None:
        m = evaluate_detection(model, dset, forward=get_adapter(model).forward, batch_size=batch_size,
                               progress=progress, desc="float")
        res.update(map_float=round(m.map, 4), map50_float=round(m.map50, 4))
    if qmodel is not None:
        m = evaluate_detection(qmodel, dset, forward=qmodel.vitq_info.forward, batch_size=batch_size,
                               progress=progress, desc="quantized")
        res.update(map=round(m.map, 4), map50=round(m.map50, 4))
    return res

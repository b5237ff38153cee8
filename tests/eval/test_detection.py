"""COCO mAP through pycocotools on hand-made ground truth with known AP; DETR outputs to COCO detections; bad
input gives a clear error, never a silently wrong mAP."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pycocotools")

from vitq.errors import DataFormatError, UnsupportedModelError  # noqa: E402
from vitq.eval.detection import (  # noqa: E402
    coco_map,
    detr_detections,
    model_category_ids,
    predict_detections,
)

#: COCOeval interpolates precision at 101 recall points; with recall 2/3 reached at precision 1 and nothing
#: beyond, the points r = 0.00 .. 0.66 (67 of them) have precision 1: AP = 67/101.
AP_TWO_OF_THREE = 67 / 101


def three_images(third_has_object: bool = True) -> dict:
    """Three 100x100 images, one category; one 10x10 object in each (none in the third if asked)."""
    boxes = {1: [10, 10, 10, 10], 2: [50, 50, 10, 10], 3: [0, 0, 10, 10]}
    if not third_has_object:
        del boxes[3]
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2, 3)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for i, b in boxes.items()],
        "categories": [{"id": 1, "name": "thing"}],
    }


def det(image_id, bbox, score, cat=1):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_two_of_three_found_at_every_threshold():
    """Two perfect boxes ranked above a false positive, the third object missed: AP = 67/101 at every IoU."""
    dets = [det(1, [10, 10, 10, 10], 0.9), det(2, [50, 50, 10, 10], 0.8), det(3, [70, 70, 10, 10], 0.7)]
    m = coco_map(three_images(), dets)
    assert m.map == pytest.approx(AP_TWO_OF_THREE, abs=1e-9)
    assert m.map50 == pytest.approx(AP_TWO_OF_THREE, abs=1e-9)
    assert (m.num_images, m.num_objects) == (3, 3)


def test_loose_box_counts_below_its_iou_only():
    """The third box has IoU 0.62 with its object: a hit at thresholds .50, .55, .60 (AP 1), a miss at the
    other seven (AP 67/101): mAP = (3 + 7 * 67/101) / 10, mAP50 = 1."""
    dets = [det(1, [10, 10, 10, 10], 0.9), det(2, [50, 50, 10, 10], 0.8), det(3, [0, 0, 10, 6.2], 0.7)]
    m = coco_map(three_images(), dets)
    assert m.map50 == pytest.approx(1.0, abs=1e-9)
    assert m.map == pytest.approx((3 + 7 * AP_TWO_OF_THREE) / 10, abs=1e-9)
    assert m.stats["map75"] == pytest.approx(AP_TWO_OF_THREE, abs=1e-9)


def test_image_without_objects_is_evaluated_as_cocoeval_does():
    """A detection on an image with no object is a false positive: ranked first it costs precision."""
    gt = three_images(third_has_object=False)
    dets = [det(3, [0, 0, 10, 10], 0.95), det(1, [10, 10, 10, 10], 0.9), det(2, [50, 50, 10, 10], 0.8)]
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1; interpolated (max to the right): 2/3 at every recall point
    assert coco_map(gt, dets).map == pytest.approx(2 / 3, abs=1e-9)
    # ranked last it costs nothing
    dets[0]["score"] = 0.1
    assert coco_map(gt, dets).map == pytest.approx(1.0, abs=1e-9)


def test_no_detections_give_zero():
    assert coco_map(three_images(), []).map == 0.0


def test_detections_on_unknown_images_are_an_error():
    dets = [det(1, [10, 10, 10, 10], 0.9), det(7, [0, 0, 5, 5], 0.5)]
    with pytest.raises(DataFormatError, match="not in the annotations"):
        coco_map(three_images(), dets)
    with pytest.raises(DataFormatError, match="not in the annotations"):
        coco_map(three_images(), dets[:1], image_ids=[1, 9])


def test_no_objects_at_all_is_an_error():
    gt = three_images()
    gt["annotations"] = []
    with pytest.raises(DataFormatError, match="no annotated object"):
        coco_map(gt, [det(1, [0, 0, 5, 5], 0.5)])


def test_detr_boxes_to_coco_pixels():
    logits = torch.tensor([[[0.0, 3.0, 0.0], [2.0, 0.0, 5.0]]])  # 2 classes + no-object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]])
    out = detr_detections(logits, boxes, [42], [(100, 200)], [3, 7])
    assert [d["category_id"] for d in out] == [7, 3]
    assert out[0]["bbox"] == pytest.approx([80.0, 30.0, 40.0, 40.0])
    assert out[1]["bbox"] == pytest.approx([0.0, 0.0, 100.0, 50.0])
    p = torch.softmax(logits[0, 0], -1)[1].item()
    assert out[0]["score"] == pytest.approx(p)
    with pytest.raises(DataFormatError, match="category ids"):
        detr_detections(logits, boxes, [42], [(100, 200)], [3])


def test_model_category_ids():
    assert model_category_ids(3, [5, 1, 9]) == [1, 5, 9]  # one class per category, sorted
    assert model_category_ids(91, [1, 90]) == list(range(91))  # COCO-indexed (published DETR)
    with pytest.raises(DataFormatError, match="cannot tell"):
        model_category_ids(4, [1, 2, 30])


def test_a_classifier_is_not_a_detector():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(UnsupportedModelError, match="not a DETR-style detector"):
        predict_detections(model, torch.zeros(2, 3, 2, 2), [1, 2], [(2, 2)] * 2, [1, 2, 3])

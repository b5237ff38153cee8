"""``coco:`` sources and the synthetic detection set: loading, padding masks, and every mismatch an error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitq.data.checks import check_source
from vitq.data.coco import load_coco, parse_coco_source
from vitq.data.sources import load_images
from vitq.data.synth_detection import SPLIT_SOURCES, SynthSpec, draw_canvas, write_coco_split
from vitq.data.transforms import DataConfig
from vitq.errors import CalibrationDataError, ConfigError, DataFormatError

CFG = DataConfig(input_size=(1, 64, 64), mean=(0.1,), std=(0.2,), crop_pct=1.0, interpolation="bilinear")
SPEC = SynthSpec(canvas=64, min_size=12, max_size=28, max_objects=3)


def fake_pool(n=40, seed=0):
    """Fashion-MNIST-like stand-ins: a bright blob on black, labels 0..9."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(2, 8, size=2)
        imgs[i, y0:28 - y0, x0:28 - x0] = rng.integers(120, 255)
    return imgs, np.arange(n) % 10


@pytest.fixture
def split_dir(tmp_path):
    return write_coco_split(tmp_path / "val", "val", 6, seed=0, spec=SPEC, pool=fake_pool())


def test_canvas_boxes_inside_and_counted():
    rng = np.random.default_rng(0)
    imgs, labels = fake_pool()
    for _ in range(20):
        img, objs = draw_canvas(rng, imgs, labels, SPEC)
        assert img.shape == (64, 64) and img.dtype == np.uint8
        assert 1 <= len(objs) <= 3
        for (x, y, w, h), label in objs:
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w >= 4 and h >= 4 and 0 <= label < 10
            # the box is tight: its border rows/columns hold object pixels
            assert img[int(y):int(y + h), int(x):int(x + w)].max() > 24


def test_generator_is_seeded_and_splits_share_no_source():
    imgs, labels = fake_pool()
    r1 = draw_canvas(np.random.default_rng(3), imgs, labels, SPEC)
    r2 = draw_canvas(np.random.default_rng(3), imgs, labels, SPEC)
    assert np.array_equal(r1[0], r2[0]) and r1[1] == r2[1]
    ranges = {k: (s, b, e) for k, (s, b, e) in SPLIT_SOURCES.items()}
    train, val, test = ranges["train"], ranges["val"], ranges["test"]
    assert train[0] == val[0] == "train" and train[2] <= val[1] and test[0] == "test"
    with pytest.raises(ConfigError):
        SynthSpec(min_objects=3, max_objects=2)


def test_load_split(split_dir):
    ds = load_coco(f"coco:{split_dir}", CFG)
    coco = json.loads((split_dir / "instances.json").read_text())
    assert ds.images.shape == (6, 1, 64, 64)  # one size: no mask channel
    assert ds.image_ids == [1, 2, 3, 4, 5, 6] and ds.sizes == [(64, 64)] * 6
    assert ds.category_ids == list(range(1, 11)) and ds.num_objects == len(coco["annotations"])
    png = np.asarray(Image.open(split_dir / "images" / coco["images"][0]["file_name"]))
    assert torch.allclose(ds.images[0, 0], (torch.from_numpy(png.copy()).float() / 255 - 0.1) / 0.2, atol=1e-6)
    # the two-part form and load_images give the same
    same = load_images(f"coco:{split_dir / 'images'}:{split_dir / 'instances.json'}", CFG)
    assert torch.equal(same.images, ds.images) and same.labels is None
    sub = load_coco(f"coco:{split_dir}", CFG, num=3, seed=1)
    assert len(sub.image_ids) == 3 and {a["image_id"] for a in sub.gt["annotations"]} <= set(sub.image_ids)


def test_variable_sizes_are_padded_with_a_mask(tmp_path):
    d = tmp_path / "var"
    (d / "images").mkdir(parents=True)
    sizes = [(40, 64), (64, 30)]  # (h, w)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w), 200, np.uint8)).save(d / "images" / f"{i}.png")
    coco = {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h} for i, (h, w) in enumerate(sizes)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}]}
    (d / "instances.json").write_text(json.dumps(coco))
    ds = load_coco(f"coco:{d}", CFG)
    assert ds.images.shape == (2, 2, 64, 64) and ds.sizes == sizes
    mask = ds.images[:, 1]
    assert mask[0, :40].eq(1).all() and mask[0, 40:].eq(0).all()
    assert mask[1, :, :30].eq(1).all() and mask[1, :, 30:].eq(0).all()
    assert ds.images[0, 0, 40:].eq(0).all()
    # DETR-style resizing: shortest edge 20, longest at most 32: 40x64 -> 20x32, 64x30 -> 32x15
    cfg = DataConfig(input_size=(1, 20, 20), mean=(0.0,), std=(1.0,), crop_pct=1.0, interpolation="bilinear",
                     extra={"shortest_edge": 20, "longest_edge": 32})
    ds = load_coco(f"coco:{d}", cfg)
    assert ds.images.shape == (2, 2, 32, 32) and ds.images[0, 1].sum() == 20 * 32 and ds.sizes == sizes


def _edit(split_dir, fn):
    p = split_dir / "instances.json"
    coco = json.loads(p.read_text())
    fn(coco)
    p.write_text(json.dumps(coco))


@pytest.mark.parametrize("case, match", [
    ("missing_file", "listed images are missing"),
    ("wrong_size", "annotations say"),
    ("zero_width_box", "degenerate boxes"),
    ("nan_box", "degenerate boxes"),
    ("orphan_annotation", "images not in the file"),
    ("unknown_category", "category id not among"),
    ("not_instances", "not a COCO instances file"),
])
def test_mismatches_are_errors(split_dir, case, match):
    if case == "missing_file":
        next((split_dir / "images").iterdir()).unlink()
    elif case == "wrong_size":
        _edit(split_dir, lambda c: c["images"][2].update(width=65))
    elif case == "zero_width_box":
        _edit(split_dir, lambda c: c["annotations"][0]["bbox"].__setitem__(2, 0))
    elif case == "nan_box":
        _edit(split_dir, lambda c: c["annotations"][0].update(bbox=[1, 2, float("nan"), 3]))
    elif case == "orphan_annotation":
        _edit(split_dir, lambda c: c["annotations"][0].update(image_id=99))
    elif case == "unknown_category":
        _edit(split_dir, lambda c: c["annotations"][0].update(category_id=42))
    elif case == "not_instances":
        _edit(split_dir, lambda c: c.pop("annotations"))
    with pytest.raises(DataFormatError, match=match):
        load_coco(f"coco:{split_dir}", CFG)


def test_bad_source_names(tmp_path):
    with pytest.raises(CalibrationDataError, match="instances.json"):
        parse_coco_source(f"coco:{tmp_path}")
    with pytest.raises(CalibrationDataError, match="split"):
        parse_coco_source("detr-synth:train")
    check_source("coco:anything")  # read later, with the annotation file

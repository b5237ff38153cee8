"""Every image source warns when it holds fewer images than asked for, and uses them all."""

import logging

import numpy as np
from PIL import Image

from vitq.data.folder import load_folder
from vitq.data.sources import load_images
from vitq.data.transforms import DataConfig

CFG = DataConfig(input_size=(3, 32, 32))


def _img(path):
    Image.new("RGB", (40, 30), color=(10, 200, 30)).save(path)


def test_flat_folder_with_one_image_warns(tmp_path, caplog):
    _img(tmp_path / "only.png")
    with caplog.at_level(logging.WARNING, logger="vitq.data"):
        found = load_images(str(tmp_path), CFG, num=32)
    assert found.images.shape[0] == 1
    assert "asked for 32 images but the source holds 1" in caplog.text and str(tmp_path) in caplog.text


def test_image_folder_with_too_few_images_warns(tmp_path, caplog):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        _img(tmp_path / cls / "0.png")
    with caplog.at_level(logging.WARNING, logger="vitq.data"):
        images, labels, _ = load_folder(tmp_path, CFG, num=5)
    assert images.shape[0] == 2 and labels.tolist() == [0, 1]
    assert "asked for 5 images but the source holds 2" in caplog.text


def test_enough_images_do_not_warn(tmp_path, caplog):
    for i in range(3):
        _img(tmp_path / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="vitq.data"):
        assert load_images(str(tmp_path), CFG, num=3).images.shape[0] == 3
        assert load_images(str(tmp_path), CFG, num=2).images.shape[0] == 2
    assert "asked for" not in caplog.text


def test_hf_rows_with_too_few_images_warn(caplog):
    from vitq.data.hf_datasets import load_hf_dataset

    rows = [{"image": np.full((8, 8, 3), 100, np.uint8), "label": i} for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="vitq.data"):
        found = load_hf_dataset(rows, None, CFG, num=10)
    assert found.images.shape[0] == 2 and "asked for 10 images but the source holds 2" in caplog.text

import pytest
import torch
from PIL import Image

from vitq.data.folder import load_folder, scan_folder
from vitq.data.transforms import DataConfig
from vitq.errors import CalibrationDataError

CFG = DataConfig(input_size=(3, 32, 32))


def _img(path, size=(40, 30), mode="RGB"):
    Image.new(mode, size, color=128 if mode in ("L", "P") else (10, 200, 30)).save(path)


def test_flat_folder_with_odd_sizes_and_modes(tmp_path):
    _img(tmp_path / "a.png", (40, 30), "RGB")
    _img(tmp_path / "b.png", (17, 90), "L")  # grayscale, odd aspect
    _img(tmp_path / "c.png", (33, 33), "RGBA")
    _img(tmp_path / "d.gif", (20, 20), "P")
    (tmp_path / "notes.txt").write_text("not an image")
    x, labels, classes = load_folder(tmp_path, CFG)
    assert x.shape == (4, 3, 32, 32) and labels is None and classes is None
    assert torch.isfinite(x).all()


def test_image_folder_labels(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _img(tmp_path / cls / f"{i}.jpg")
    x, labels, classes = load_folder(tmp_path, CFG)
    assert classes == ["cat", "dog"] and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_seeded_subsample(tmp_path):
    for i in range(10):
        _img(tmp_path / f"{i}.png", (32 + i, 32))
    a, _, _ = load_folder(tmp_path, CFG, num=4, seed=1)
    b, _, _ = load_folder(tmp_path, CFG, num=4, seed=1)
    assert torch.equal(a, b)


def test_empty_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="no images in"):
        scan_folder(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_unreadable_image_is_named(tmp_path):
    _img(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(CalibrationDataError, match="broken.jpg"):
        load_folder(tmp_path, CFG)


def test_grayscale_model_input(tmp_path):
    _img(tmp_path / "a.png", (28, 28), "RGB")
    x, _, _ = load_folder(tmp_path, DataConfig(input_size=(1, 28, 28), mean=(0.5,), std=(0.5,), crop_pct=1.0))
    assert x.shape == (1, 1, 28, 28)

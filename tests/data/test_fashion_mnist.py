"""Fashion-MNIST loaders: the committed subset and its provenance from the Debian data set."""

from __future__ import annotations

import hashlib

import pytest
import torch

from vitq.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    load_fmnist_subset,
)
from vitq.data.idx import read_idx
from vitq.errors import CalibrationDataError, ConfigError

HAVE_FULL = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_full = pytest.mark.skipif(
    not HAVE_FULL, reason=f"Debian package dataset-fashion-mnist not installed ({FASHION_MNIST_DIR} missing)"
)


@pytest.mark.parametrize("split, n", [("calib", 1024), ("test", 2000)])
def test_subset_shapes(split, n):
    images, labels = load_fmnist_subset(split)
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < len(FASHION_MNIST_CLASSES) == 10
    assert len(torch.unique(labels)) == 10  # every class is represented
    assert images.float().std() > 10  # real images, not zeros


def test_unknown_split():
    with pytest.raises(ConfigError, match="'val'.*calib, test"):
        load_fmnist_subset("val")
    with pytest.raises(ConfigError, match="'calib'.*train, test"):
        load_fashion_mnist("calib")


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(CalibrationDataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


@needs_full
def test_calib_subset_comes_from_train():
    train_x, train_y = load_fashion_mnist("train")
    calib_x, calib_y = load_fmnist_subset("calib")
    train_hashes = {hashlib.sha1(img.numpy().tobytes()).digest() for img in train_x}
    assert all(hashlib.sha1(img.numpy().tobytes()).digest() in train_hashes for img in calib_x)
    # The shipped indices say exactly where each one came from.
    from vitq.data.fashion_mnist import SUBSET_DIR

    idx = torch.from_numpy(read_idx(SUBSET_DIR / "calib-indices-idx1-ubyte.gz").astype("int64"))
    assert len(set(idx.tolist())) == 1024
    assert torch.equal(train_x[idx], calib_x) and torch.equal(train_y[idx], calib_y)


@needs_full
def test_test_subset_is_head_of_test_split():
    test_x, test_y = load_fashion_mnist("test")
    assert test_x.shape == (10000, 1, 28, 28)
    sub_x, sub_y = load_fmnist_subset("test")
    assert torch.equal(test_x[:2000], sub_x) and torch.equal(test_y[:2000], sub_y)


def test_asking_for_more_images_than_the_source_holds_warns_and_uses_all(caplog):
    from vitq.data.sources import load_images
    from vitq.data.transforms import DataConfig

    with caplog.at_level("WARNING", logger="vitq.data.sources"):
        got = load_images("fmnist-subset:test", DataConfig(input_size=(1, 28, 28), mean=(0.5,), std=(0.5,), crop_pct=1.0), num=10**6)
    assert len(got.labels) == len(load_fmnist_subset("test")[1])
    assert "asked for 1000000 images but the source holds" in caplog.text

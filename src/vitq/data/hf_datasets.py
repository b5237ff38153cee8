"""Hugging Face ``datasets`` as calibration / evaluation data: a hub name, a ``save_to_disk`` folder, or rows in memory.

Anything indexable whose rows are dicts with an image and (optionally) an integer label works: a
``datasets.Dataset``, a ``DatasetDict`` (a split is picked) or a plain list of dicts, so the ``datasets``
package (``pip install 'vitq[hf-datasets]'``) is needed only to load by name or path. Images may be PIL
images, numpy arrays / tensors / nested lists (``HxW``, ``HxWxC`` or ``CxHxW``; uint8, or floats in 0..1),
encoded bytes, or the ``{"bytes", "path"}`` dicts of an undecoded ``Image`` column.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitq.data.imageset import ImageSet, subsample
from vitq.data.transforms import DataConfig, preprocess_image
from vitq.errors import CalibrationDataError, DataFormatError

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "img", "images", "pixel_values", "picture")
LABEL_KEYS = ("label", "labels", "fine_label", "target", "class", "y")
_INSTALL_HINT = "pip install 'vitq[hf-datasets]'"


def _import_datasets() -> Any:
    try:
        import datasets
    except ModuleNotFoundError as e:
        raise CalibrationDataError(
            f"loading a Hugging Face data set by name or path needs the `datasets` package: {_INSTALL_HINT} "
            f"(or pass a datasets.Dataset / list of dicts already in memory)"
        ) from e
    return datasets


def _open(name: str, split: str | None) -> Any:
    datasets = _import_datasets()
    path = Path(name)
    saved = path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types (FileNotFound, ValueError, connection errors)
        how = "load_from_disk" if saved else "load_dataset"
        raise CalibrationDataError(f"datasets.{how}({name!r}, split={split!r}) failed: {type(e).__name__}: {e}") from e


def _pick_split(data: Any, split: str | None, what: str) -> Any:
    if not isinstance(data, Mapping):
        return data
    splits = list(data.keys())
    if split is None:
        if len(splits) == 1:
            return data[splits[0]]
        raise CalibrationDataError(f"{what} has splits {splits}; name one (e.g. hf:{what}:{splits[0]})")
    if split not in data:
        raise CalibrationDataError(f"{what} has no split {split!r}; valid: {', '.join(map(str, splits))}")
    return data[split]


def _is_image_like(v: Any) -> bool:
    if isinstance(v, (Image.Image, np.ndarray, torch.Tensor, bytes, bytearray)):
        return not isinstance(v, (np.ndarray, torch.Tensor)) or v.ndim in (2, 3)
    if isinstance(v, Mapping):
        return "bytes" in v or "path" in v
    return isinstance(v, list) and len(v) > 0 and isinstance(v[0], list)


def to_pil(value: Any, where: str = "value") -> Image.Image:
    """Convert one image value of a row (see the module doc for the accepted kinds) to a PIL image.

    Raises:
        DataFormatError: not an image (the message names ``where`` and the value's type) or undecodable.
    """
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (str, Path)) and not Path(value).is_file():
        raise DataFormatError(
            f"{where}: expected an image (PIL.Image, numpy array, tensor, encoded bytes, image file path), "
            f"found {type(value).__name__} {str(value)[:60]!r}"
        )
    if isinstance(value, (bytes, bytearray, str, Path)):
        try:
            with Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value) as img:
                img.load()
                return img.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise DataFormatError(f"{where}: cannot decode the image ({e})") from e
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, list, tuple)):
        arr = np.asarray(value)
        if arr.dtype.kind not in "uif" or arr.size == 0:
            raise DataFormatError(f"{where}: expected a numeric image array, found dtype {arr.dtype} shape {arr.shape}")
        if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CxHxW -> HxWxC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise DataFormatError(f"{where}: expected an HxW, HxWxC or CxHxW image array, found shape {arr.shape}")
        if arr.dtype.kind == "f" and arr.max() <= 1.0:
            arr = arr * 255.0  # floats in 0..1
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    raise DataFormatError(
        f"{where}: expected an image (PIL.Image, numpy array, tensor, encoded bytes), found {type(value).__name__}"
    )


def _to_label(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataFormatError(f"{where}: a label must be an integer class index, found {value!r} ({type(value).__name__})")
    return int(value)


def _resolve_key(row: Mapping, key: str | None, candidates: Sequence[str], what: str, required: bool) -> str | None:
    keys = list(row.keys())
    if key is not None:
        if key not in row:
            raise DataFormatError(f"{what} key {key!r} not in the rows; keys: {', '.join(map(str, keys))}")
        return key
    for k in candidates:
        if k in row:
            return k
    if what == "image":
        for k in keys:
            if _is_image_like(row[k]):
                return k
    if required:
        raise DataFormatError(f"no {what} column found among the keys {keys}; pass {what}_key=")
    return None


def load_hf_dataset(
    data: str | Path | Any,
    split: str | None,
    cfg: DataConfig,
    *,
    num: int | None = None,
    seed: int = 0,
    image_key: str | None = None,
    label_key: str | None = None,
) -> ImageSet:
    """Load ``num`` images (seeded random sample; all when None) of a Hugging Face data set, preprocessed by ``cfg``.

    Args:
        data: a hub name or ``save_to_disk`` folder (needs ``datasets``), a ``datasets.Dataset`` /
            ``DatasetDict``, or any sequence of dict rows.
        split: the split to load (``"train"``, ``"test[:100]"``, ...); picks from a ``DatasetDict``/dict of
            splits; ignored for a single data set in memory.
        cfg: the model's data configuration (channels, resize/crop, normalisation).
        image_key, label_key: the columns; None picks the first of :data:`IMAGE_KEYS` / :data:`LABEL_KEYS`
            present (any image-like column for images). Without a label column, or when every label is -1
            (an unlabelled split), the labels are None.

    Returns:
        An :class:`~vitq.data.imageset.ImageSet` with images ``(N, C, H, W)`` and int64 labels ``(N,)`` or None.

    Raises:
        CalibrationDataError: ``datasets`` missing, loading failed, unknown split, or no rows.
        DataFormatError: a named key is missing (the message lists the keys), a row is not a dict, a value is
            not an image, or a label is not an integer.
    """
    what = str(data) if isinstance(data, (str, Path)) else type(data).__name__
    if isinstance(data, (str, Path)):
        data = _open(str(data), split)
    data = _pick_split(data, split, what)
    try:
        n = len(data)
    except TypeError as e:
        raise DataFormatError(f"{what}: expected an indexable data set of dict rows, found {type(data).__name__}") from e
    if n == 0:
        raise CalibrationDataError(f"{what} (split {split!r}) is empty: no rows to load")
    idx = subsample(n, num, seed, what) or list(range(n))

    rows = []
    for i in idx:
        row = data[i]
        if not isinstance(row, Mapping):
            raise DataFormatError(f"{what}: row {i} is a {type(row).__name__}, expected a dict of columns")
        rows.append((i, row))
    img_key = _resolve_key(rows[0][1], image_key, IMAGE_KEYS, "image", required=True)
    lbl_key = _resolve_key(rows[0][1], label_key, LABEL_KEYS, "label", required=False)

    images, labels = [], []
    for i, row in rows:
        for k in (img_key, lbl_key):
            if k is not None and k not in row:
                raise DataFormatError(f"{what}: row {i} has no {k!r}; keys: {', '.join(map(str, row))}")
        images.append(preprocess_image(to_pil(row[img_key], f"{what} row {i} [{img_key!r}]"), cfg))
        if lbl_key is not None:
            labels.append(_to_label(row[lbl_key], f"{what} row {i} [{lbl_key!r}]"))

    label_t = torch.tensor(labels, dtype=torch.int64) if lbl_key is not None else None
    if label_t is not None and bool((label_t == -1).all()):
        logger.warning("%s: every %r is -1 (an unlabelled split); returning no labels", what, lbl_key)
        label_t = None
    elif label_t is not None and bool((label_t < 0).any()):
        bad = int(label_t.min())
        raise DataFormatError(f"{what}: negative label {bad} in {lbl_key!r}; labels must be class indices >= 0")
    logger.info("loaded %d images from %s (split %s)", len(images), what, split)
    return ImageSet(torch.stack(images), label_t, f"hf:{what}" + (f":{split}" if split else ""))

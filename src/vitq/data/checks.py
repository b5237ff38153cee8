"""Checks of a data source name (:mod:`vitq.data.sources`) that read nothing and import nothing heavy, so
that the command line rejects a wrong ``--calib``/``--data`` at once, before torch is even imported."""

from __future__ import annotations

from pathlib import Path

from vitq.errors import CalibrationDataError

#: the prefixes of the built-in sets; any other source is a folder
BUILTIN_PREFIXES = ("fmnist:", "fmnist-subset:", "hf:", "foolbox:", "coco:", "detr-synth:")
_FMNIST_SPLITS = {"fmnist-subset": ("calib", "test"), "fmnist": ("train", "test")}


def check_source(source: str) -> None:
    """What can be told about ``source`` without reading it, before any work starts: a folder must exist
    and be a directory, an ``fmnist``/``fmnist-subset`` split must be a valid one. Raises
    :class:`CalibrationDataError` (the message names the source)."""
    if source.startswith(("fmnist:", "fmnist-subset:")):
        kind, split = source.split(":", 1)
        if split not in _FMNIST_SPLITS[kind]:
            raise CalibrationDataError(f"{source!r}: split must be one of {_FMNIST_SPLITS[kind]}")
        return
    if source.startswith(BUILTIN_PREFIXES):
        return
    path = Path(source)
    if not path.exists():
        raise CalibrationDataError(f"image folder {source} does not exist (give a folder of images or a built-in "
                                   f"set: {', '.join(p + '...' for p in BUILTIN_PREFIXES)})")
    if not path.is_dir():
        raise CalibrationDataError(f"{source} is not a directory (give a folder of images)")

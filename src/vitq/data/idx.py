"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST (plain or gzip-compressed).

Layout: two zero bytes, one dtype code byte, one byte with the number of dimensions, then one
big-endian uint32 per dimension, then the data in big-endian, C order.
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np

from vitq.errors import DataFormatError

logger = logging.getLogger(__name__)

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}


def _is_gzip(path: Path) -> bool:
    # Sniff the gzip magic rather than trusting the suffix, so a renamed file still loads.
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if _is_gzip(path):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
            raise DataFormatError(f"{path}: corrupt or truncated gzip stream ({e})") from e
    return path.read_bytes()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a native-endian numpy array of the stored dtype.

    Raises:
        DataFormatError: bad magic number, unknown dtype code, or fewer data bytes than the dims need.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataFormatError(f"{path}: only {len(raw)} bytes, an IDX header needs at least 4")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataFormatError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected two zero bytes, a dtype code and ndim "
            f"(e.g. 0x00000803 for uint8 images)"
        )
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X} ({IDX_DTYPES[c].name})" for c in IDX_DTYPES)
        raise DataFormatError(f"{path}: unknown IDX dtype code 0x{code:02X}; valid codes: {valid}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataFormatError(
            f"{path}: truncated header: {ndim} dims need {header_len} header bytes, file has {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header_len
    if have < need:
        raise DataFormatError(
            f"{path}: truncated IDX data: dims {tuple(dims)} of {dtype.name} need {need} bytes, found {have}"
        )
    if have > need:
        logger.warning("%s: %d trailing bytes after the IDX data ignored", path, have - need)
    arr = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The gzip header carries no file name or time stamp, so equal arrays give byte-identical files.

    Raises:
        DataFormatError: the dtype has no IDX code, or the array has more than 255 dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _CODE_BY_KIND:
        valid = ", ".join(dt.name for dt in IDX_DTYPES.values())
        raise DataFormatError(f"cannot write dtype {array.dtype} to IDX {path}; valid dtypes: {valid}")
    if array.ndim > 255:
        raise DataFormatError(f"cannot write a {array.ndim}-D array to IDX {path}; at most 255 dims")
    code = _CODE_BY_KIND[key]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        # mtime=0 and no filename keep the output deterministic for committed assets.
        with open(path, "wb") as raw_f, gzip.GzipFile(filename="", mode="wb", fileobj=raw_f, mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)

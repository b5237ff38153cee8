"""Packed storage: b-bit weight codes stored densely (b bits each), everything else as in ``save_quantized``.

    save_packed(qmodel, "out/")       # packed.safetensors + vitq.json
    qmodel = load_packed("out/")      # the same simulation, bit for bit

Layout of a packed tensor: the codes in row-major order, each as b-bit two's complement, concatenated
into one little-endian bit stream (code i occupies bits ``[i*b, (i+1)*b)``), stored as uint8 bytes,
``ceil(n * b / 8)`` of them. At 8 bits that is the int8 codes themselves; at 4 bits two codes per byte,
the first in the low nibble; at 6 bits four codes per three bytes. Packing and unpacking are vectorised
bit-plane operations (``numpy.unpackbits`` / ``packbits``).

The file holds the packed codes of every quantized weight, and the model's other tensors (biases, norms,
embeddings, float head, every interval ``scale``) in their own dtype. Loading rebuilds the architecture
exactly as :func:`vitq.export.serialization.load_quantized` does, then sets each weight to
``codes * scale``, which is bit for bit the frozen weight of the saved model.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from vitq.errors import ExportError, QuantizedModelFormatError
from vitq.export.serialization import (
    DIGEST_FORMAT_VERSION,
    PACKED_FORMAT,
    check_output_path,
    finish_load,
    load_quantized,
    quantized_meta,
    read_meta,
    rebuild_quantized,
    write_output,
)
from vitq.nn.qops import quant_ops
from vitq.quantizers.uniform import UniformQuantizer, qrange

log = logging.getLogger(__name__)

FORMAT = PACKED_FORMAT
FORMAT_VERSION = DIGEST_FORMAT_VERSION  # 3: + the sha256 of packed.safetensors
READABLE_FORMAT_VERSIONS = (1, 2, 3)  # v1: before the QuantInfo "calibration" record; v1, v2: no digest
PACKED_FILE = "packed.safetensors"
PACKED_SUFFIX = ".packed"
MIN_PACK_BITS, MAX_PACK_BITS = 2, 8


def _check_pack_bits(bits: int) -> None:
    if not MIN_PACK_BITS <= bits <= MAX_PACK_BITS:
        raise ExportError(f"bits={bits}: packing handles {MIN_PACK_BITS}..{MAX_PACK_BITS}-bit codes")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` packed b-bit codes."""
    return math.ceil(numel * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed b-bit codes (any integer dtype, values in ``[-2^(b-1), 2^(b-1)-1]``) -> packed uint8 bytes (1-D)."""
    _check_pack_bits(bits)
    qmin, qmax = qrange(bits)
    flat = codes.detach().flatten().to(torch.int16)
    if flat.numel() and (int(flat.min()) < qmin or int(flat.max()) > qmax):
        raise ExportError(f"codes outside the {bits}-bit range [{qmin}, {qmax}]: "
                          f"[{int(flat.min())}, {int(flat.max())}]")
    u = (flat.numpy() & (2**bits - 1)).astype(np.uint8)  # two's complement in b bits
    planes = np.unpackbits(u[:, None], axis=1, count=bits, bitorder="little")  # (n, b): bit j of code i
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` signed codes as int8 (1-D)."""
    _check_pack_bits(bits)
    data = packed.detach().cpu().numpy().astype(np.uint8, copy=False)
    if data.size != packed_nbytes(numel, bits):
        raise QuantizedModelFormatError(f"{data.size} packed bytes do not hold {numel} {bits}-bit codes "
                                        f"({packed_nbytes(numel, bits)} bytes)")
    planes = np.unpackbits(data, count=numel * bits, bitorder="little").reshape(numel, bits)
    u = np.packbits(planes, axis=1, bitorder="little")[:, 0].astype(np.int16)  # high bits padded with 0
    sign = 1 << (bits - 1)
    return torch.from_numpy(((u ^ sign) - sign).astype(np.int8))


def _weight_quantizer(name: str, op) -> UniformQuantizer:
    q = op.quantizers()[1]
    if type(q) is not UniformQuantizer or not q.signed:
        raise ExportError(f"{name}: weight quantizer {type(q).__name__} cannot be packed "
                          f"(packing stores signed UniformQuantizer codes)")
    if not q.enabled:
        raise ExportError(f"{name}: weight quantizer is disabled (not calibrated); calibrate before packing")
    _check_pack_bits(q.bits)
    return q


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that share storage (tied weights) are stored once; returns (unique tensors, alias -> name)."""
    unique, aliases, seen = {}, {}, {}
    for k, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            unique[k] = t.contiguous()
    return unique, aliases


@torch.no_grad()
def save_packed(qmodel: nn.Module, path: str | Path, extra: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write a calibrated model with its weights packed at their bit-widths to the directory ``path``.

    The directory is ``packed.safetensors`` + ``vitq.json``. The saved model is frozen by construction: its
    weights are ``codes * scale``. ``path`` and ``overwrite`` as in
    :func:`~vitq.export.serialization.save_quantized` (an existing vitq output is replaced atomically and only
    with ``overwrite=True``; anything else at ``path`` is refused and left untouched).
    """
    check_output_path(path, overwrite)  # before packing
    ops = quant_ops(qmodel)
    tensors = dict(qmodel.state_dict())
    packed: dict[str, dict] = {}
    for name, op in ops.items():
        if not op.has_weight:
            continue
        q = _weight_quantizer(name, op)
        key = f"{name}.weight"
        if key not in tensors:
            raise ExportError(f"{name}: its weight is not in the model's state dict under {key!r}")
        tensors[key + PACKED_SUFFIX] = pack_codes(q.codes(op.weight), q.bits)
        del tensors[key]
        packed[key] = {"bits": q.bits, "shape": list(op.weight.shape), "dtype": str(op.weight.dtype)}
    tensors, aliases = _dedupe(tensors)
    meta = quantized_meta(qmodel, extra, fmt=FORMAT, fmt_version=FORMAT_VERSION)
    meta["frozen"] = True
    for op_meta in meta["ops"].values():  # the intervals are in the tensor file; keep the JSON small
        op_meta.pop("a_scale", None)
        op_meta.pop("b_scale", None)
    meta["packed"] = packed
    meta["aliases"] = aliases
    write_output(path, meta, PACKED_FILE, lambda f: save_file(tensors, str(f)), overwrite=overwrite)
    log.info("saved %d packed weights to %s (%.3f MB)", len(packed), path, (Path(path) / PACKED_FILE).stat().st_size / 1e6)
    return Path(path)


@torch.no_grad()
def load_packed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model written by :func:`save_packed` (``model``: as in :func:`load_quantized`)."""
    path = Path(path)
    meta = read_meta(path, fmt=FORMAT, fmt_versions=READABLE_FORMAT_VERSIONS, weights_file=PACKED_FILE)
    qmodel = rebuild_quantized(meta, path, model)
    stored = load_file(str(path / PACKED_FILE))
    for alias, name in meta.get("aliases", {}).items():
        stored[alias] = stored[name]
    packed = {k: stored.pop(k + PACKED_SUFFIX, None) for k in meta["packed"]}
    lost = [k for k, v in packed.items() if v is None]
    own = qmodel.state_dict()
    missing = sorted(set(own) - set(stored) - set(packed))
    unexpected = sorted(set(stored) - set(own))
    if lost or missing or unexpected:
        raise QuantizedModelFormatError(f"{path}/{PACKED_FILE} does not match the architecture: packed weights "
                                        f"absent {lost[:5]}, missing {missing[:5]}, unexpected {unexpected[:5]}")
    qmodel.load_state_dict(stored, strict=False)
    ops = quant_ops(qmodel)
    for key, info in meta["packed"].items():
        op = ops[key[: -len(".weight")]]
        q = op.quantizers()[1]
        if q.bits != info["bits"] or list(op.weight.shape) != info["shape"]:
            raise QuantizedModelFormatError(f"{path}: {key} is {info['bits']}-bit {info['shape']} in the file, "
                                            f"{q.bits}-bit {list(op.weight.shape)} in the model")
        codes = unpack_codes(packed[key], info["bits"], op.weight.numel()).reshape(op.weight.shape)
        # the same float32 product as fake_quantize: bit for bit the frozen weight
        op.weight.copy_(codes.to(op.weight.dtype) * q.broadcast_scale(codes))
    return finish_load(qmodel, meta)


def is_packed(path: str | Path) -> bool:
    return (Path(path) / PACKED_FILE).is_file()


def load_saved(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a directory written by :func:`save_packed` or by :func:`~vitq.export.serialization.save_quantized`."""
    return load_packed(path, model) if is_packed(path) else load_quantized(path, model)


def expected_packed_bytes(qmodel: nn.Module) -> dict[str, int]:
    """The size a packed file should have: ``quantized`` = sum over weights of ``ceil(numel * bits / 8)``,
    ``float`` = every other tensor of the state dict at its dtype's size (biases, norms, scales, ...);
    ``params``: the number of quantized weights."""
    quantized, params, seen = 0, 0, set()
    for name, op in quant_ops(qmodel).items():
        if op.has_weight:
            quantized += packed_nbytes(op.weight.numel(), op.quantizers()[1].bits)
            params += op.weight.numel()
            seen.add(f"{name}.weight")
    rest, _ = _dedupe({k: v for k, v in qmodel.state_dict().items() if k not in seen})
    other = sum(t.numel() * t.element_size() for t in rest.values())
    return {"quantized": quantized, "float": other, "total": quantized + other, "params": params}

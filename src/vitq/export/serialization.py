"""Save and load quantized models: ``model.safetensors`` (tensors, including every interval buffer)
plus ``vitq.json`` (the model's :class:`~vitq.info.QuantInfo` metadata: architecture spec, config,
state; per-op bits and intervals; the SHA-256 of the tensor file). Loading rebuilds the architecture from
the spec, re-applies :func:`vitq.quantize` and loads the tensors; nothing is unpickled.

Outputs never destroy input (:func:`check_output_path`): a save refuses a file, or a non-empty directory that
is not a vitq output, at its path; it replaces an earlier vitq output only with ``overwrite=True``, and then
atomically (the old one stays until the new one is complete; :func:`vitq.utils.atomic.atomic_dir`).

Loads are checked: ``vitq.json`` is strict JSON (no ``NaN`` / ``Infinity``, written or read), the tensor file
must have the recorded digest, and each op's saved bits and state must be what the saved config (and plan)
gives the rebuilt architecture (:func:`check_saved_ops`).

Format versions: 3 is written (2 + the ``files`` digests); 2 and 1 (vitq 0.1.0 before the recipe registry:
no ``calibration`` record, config version 1; ``tests/fixtures/saved_v1``) are read, without a digest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_model, save_model

import vitq
from vitq.config import QuantConfig
from vitq.errors import OutputExistsError, OutputPathError, QuantizedModelFormatError
from vitq.info import get_quant_info
from vitq.lifecycle import quantize
from vitq.nn.qops import quant_ops
from vitq.quantizers.uniform import MAX_BITS, MIN_BITS
from vitq.utils.atomic import apply_umask, atomic_dir
from vitq.utils.jsonio import dumps_strict, loads_strict

log = logging.getLogger(__name__)

FORMAT = "vitq-quantized"
FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
#: the first format version that records (and so must have) the SHA-256 of its tensor file
DIGEST_FORMAT_VERSION = 3
PACKED_FORMAT = "vitq-packed"  # :mod:`vitq.export.packing`
#: the formats of a vitq output directory: one a save may replace (with ``overwrite=True``)
OUTPUT_FORMATS = (FORMAT, PACKED_FORMAT)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "vitq.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- output paths ----------------------------------------------------------------------------------------

def is_vitq_output(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by a vitq save: its ``vitq.json`` names a vitq format."""
    try:
        doc = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") in OUTPUT_FORMATS


def check_output_path(path: str | Path, overwrite: bool = False) -> None:
    """Check that a save may write the directory ``path``, before any work starts; creates nothing.

    Allowed: a path that does not exist (missing parents are created by the save), an empty directory, and
    with ``overwrite=True`` an earlier vitq output (:func:`is_vitq_output`: ``vitq.json`` of format
    ``vitq-quantized`` or ``vitq-packed``). The nearest existing ancestor must be a directory this process
    may write.

    Raises:
        OutputExistsError: ``path`` is a file (or a link to one, or a dangling link), a non-empty directory
            that is not a vitq output (never replaced), or a vitq output without ``overwrite``.
        OutputPathError: the parent cannot be created or written.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputExistsError(f"output {path} exists and is not a directory; refusing to replace it "
                                    "(a saved model is a directory): choose another path")
        try:
            non_empty = any(path.iterdir())
        except OSError as e:
            raise OutputPathError(f"output {path}: cannot list the existing directory: {e}") from e
        if non_empty:
            if not is_vitq_output(path):
                raise OutputExistsError(
                    f"output {path} is a non-empty directory that is not a vitq output (no {META_FILE} of format "
                    f"{' or '.join(OUTPUT_FORMATS)}); refusing to replace it: choose another path or empty it")
            if not overwrite:
                raise OutputExistsError(f"output {path} holds a saved vitq model; pass overwrite=True "
                                        "(command line: --overwrite) to replace it, or choose another path")
    anc = path.absolute().parent
    while not (anc.exists() or anc.is_symlink()) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputPathError(f"output {path}: cannot create it, {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputPathError(f"output {path}: cannot write to {anc} (permission denied)")


# -- digests ---------------------------------------------------------------------------------------------

def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path) -> dict:
    """What ``vitq.json`` records of a written file: ``{"sha256", "bytes"}``."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def verify_files(path: str | Path, meta: dict, weights_file: str) -> None:
    """Check the tensor file against the digest ``meta["files"]`` records (required from format version
    :data:`DIGEST_FORMAT_VERSION`; older versions record none). Raises :class:`QuantizedModelFormatError`
    naming the file on a mismatch or a missing / malformed record."""
    path = Path(path)
    files = meta.get("files")
    if files is None and meta.get("format_version", 0) < DIGEST_FORMAT_VERSION:
        log.debug("%s: format v%s records no digest of %s", path, meta.get("format_version"), weights_file)
        return
    rec = files.get(weights_file) if isinstance(files, dict) else None
    expected = rec.get("sha256") if isinstance(rec, dict) else None
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise QuantizedModelFormatError(f"{path / META_FILE}: no valid sha256 digest of {weights_file} under "
                                        f"\"files\" (format v{meta.get('format_version')} records one)")
    size, recorded = (path / weights_file).stat().st_size, rec.get("bytes")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and size != recorded:
        raise QuantizedModelFormatError(f"{path / weights_file}: {size} bytes, but {META_FILE} records {recorded} "
                                        "(truncated or changed after saving)")
    actual = sha256_file(path / weights_file)
    if actual != expected:
        raise QuantizedModelFormatError(
            f"{path / weights_file}: its sha256 {actual[:16]}... differs from the digest {expected[:16]}... recorded "
            f"in {META_FILE}: the file is corrupt or was changed after saving")


# -- save ------------------------------------------------------------------------------------------------


def quant_params(model: nn.Module) -> dict:
    """Per-op bits and intervals, for humans and for checking a load."""
    ops = {}
    for name, op in quant_ops(model).items():
        qa, qb = op.quantizers()
        ops[name] = {
            "role": op.role,
            "a_bits": qa.bits,
            "b_bits": qb.bits,
            "b_is_weight": op.has_weight,
            "enabled": op.quant_enabled,
            "a_scale": qa.scale.flatten().tolist(),
            "b_scale": qb.scale.flatten().tolist(),
        }
    return ops


def quantized_meta(model: nn.Module, extra: dict | None = None, fmt: str = FORMAT,
                   fmt_version: int = FORMAT_VERSION) -> dict:
    """What ``vitq.json`` records: format, architecture spec, config, data config, state and per-op bits."""
    return {
        "format": fmt,
        "format_version": fmt_version,
        "vitq_version": vitq.__version__,
        **get_quant_info(model).to_meta(),
        "ops": quant_params(model),
        "extra": extra or {},
    }


def write_output(path: str | Path, meta: dict, weights_file: str, write_weights, *, overwrite: bool = False) -> Path:
    """The common tail of :func:`save_quantized` and :func:`~vitq.export.packing.save_packed`: check the
    path, check that ``meta`` is strict JSON, then in a temporary directory write the tensors
    (``write_weights(file path)``), record their digest in ``meta["files"]``, write ``vitq.json``, and swap
    it into place (checking the path again just before)."""
    path = Path(path)
    check_output_path(path, overwrite)
    dumps_strict(meta, what=f"{path / META_FILE}")  # fail before writing any tensor
    with atomic_dir(path, before_replace=lambda: check_output_path(path, overwrite)) as tmp:
        write_weights(tmp / weights_file)
        apply_umask(tmp / weights_file)  # safetensors creates it 0600; a saved model is an ordinary file
        meta = {**meta, "files": {weights_file: file_record(tmp / weights_file)}}
        (tmp / META_FILE).write_text(dumps_strict(meta, what=f"{path / META_FILE}", indent=1))
    return path


def save_quantized(model: nn.Module, path: str | Path, extra: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write a quantized model to the directory ``path``: ``model.safetensors`` + ``vitq.json``.

    ``path`` must not exist, be an empty directory, or (with ``overwrite=True``) hold an earlier vitq output,
    which is replaced atomically; anything else raises :class:`~vitq.errors.OutputExistsError` before any
    work and is left untouched (:func:`check_output_path`). ``extra`` is stored as is (strict JSON: a NaN or
    infinite value raises :class:`~vitq.errors.NonFiniteError` naming its key).
    """
    meta = quantized_meta(model, extra)
    write_output(path, meta, WEIGHTS_FILE, lambda f: save_model(model, str(f)), overwrite=overwrite)
    log.info("saved quantized model to %s", path)
    return Path(path)


# -- load ------------------------------------------------------------------------------------------------

def read_meta(path: str | Path, fmt: str = FORMAT, fmt_versions: tuple[int, ...] = READABLE_FORMAT_VERSIONS,
              weights_file: str = WEIGHTS_FILE, *, verify: bool = True) -> dict:
    """The ``vitq.json`` of a saved directory, strictly parsed, its format checked and (``verify``) the
    tensor file checked against its recorded digest (:func:`verify_files`)."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file() or not (path / weights_file).is_file():
        raise QuantizedModelFormatError(f"{path} is not a saved vitq model (needs {META_FILE} and {weights_file})")
    try:
        meta = loads_strict(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise QuantizedModelFormatError(f"{meta_file} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise QuantizedModelFormatError(f"{meta_file}: expected a JSON object, found {type(meta).__name__}")
    if meta.get("format") != fmt or meta.get("format_version") not in fmt_versions:
        raise QuantizedModelFormatError(
            f"{meta_file}: format {meta.get('format')!r} v{meta.get('format_version')} is not {fmt} "
            f"v{' or v'.join(map(str, fmt_versions))}"
        )
    for key in ("config", "ops"):
        if not isinstance(meta.get(key), dict):
            raise QuantizedModelFormatError(f"{meta_file}: {key!r} is missing or not an object")
    for key in ("calibrated", "frozen"):
        if not isinstance(meta.get(key), bool):
            raise QuantizedModelFormatError(f"{meta_file}: {key!r}={meta.get(key)!r} must be true or false")
    if verify:
        verify_files(path, meta, weights_file)
    return meta


def load_quantized(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save_quantized`.

    Args:
        path: the saved directory.
        model: a float model of the same architecture to quantize and fill; by default it is rebuilt
            from the saved spec (``timm:``, ``hf:`` or ``vitq:``) with random init, then overwritten.
    """
    path = Path(path)
    meta = read_meta(path)
    qmodel = rebuild_quantized(meta, path, model)
    missing, unexpected = load_model(qmodel, str(path / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise QuantizedModelFormatError(
            f"{path}/{WEIGHTS_FILE} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return finish_load(qmodel, meta)


def rebuild_quantized(meta: dict, path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The quantized architecture ``meta`` describes, tensors not loaded yet: the float model rebuilt from
    the saved spec (or ``model``), quantized with the saved config, each op at its saved bits."""
    from vitq.models.loading import float_model_from_spec

    if model is None:
        spec = meta.get("model_spec")
        if not spec:
            raise QuantizedModelFormatError(
                f"{path} records no model spec (it was quantized from a custom module): pass model=<float model>"
            )
        model = float_model_from_spec(spec, weights=False)  # the saved tensors are loaded next
    qmodel = quantize(model, QuantConfig.from_dict(meta["config"]), inplace=True)
    ops = quant_ops(qmodel)
    if set(ops) != set(meta["ops"]):
        raise QuantizedModelFormatError(
            f"{path}: the rebuilt model's quantized ops differ from the saved ones "
            f"(missing {sorted(set(meta['ops']) - set(ops))[:5]}, extra {sorted(set(ops) - set(meta['ops']))[:5]})"
        )
    check_saved_ops(meta, qmodel, path)
    return qmodel


def check_saved_ops(meta: dict, qmodel: nn.Module, path: str | Path = "") -> None:
    """Check each op's record in ``meta["ops"]`` against ``qmodel``, the architecture rebuilt with the saved
    config (and plan): ``role`` and ``b_is_weight`` as the op's, ``a_bits`` / ``b_bits`` the bits the config
    gives the op (``config.bits_for``; integers in 2..16, or 32 where the op keeps that operand in float),
    ``enabled`` a boolean, and true for every op of a model recorded as calibrated.

    Raises:
        QuantizedModelFormatError: naming the op and the field (the file was edited or is corrupt).
    """
    where = f"{Path(path) / META_FILE}" if str(path) else META_FILE
    calibrated = meta.get("calibrated") is True
    for name, op in quant_ops(qmodel).items():
        rec = meta["ops"].get(name)
        if not isinstance(rec, dict):
            raise QuantizedModelFormatError(f"{where}: op {name}: expected an object, found {rec!r}")
        if rec.get("role") != op.role:
            raise QuantizedModelFormatError(f"{where}: op {name}: role={rec.get('role')!r}, but the rebuilt op "
                                            f"is {op.role!r}")
        if "b_is_weight" in rec and rec["b_is_weight"] is not op.has_weight:
            raise QuantizedModelFormatError(f"{where}: op {name}: b_is_weight={rec['b_is_weight']!r}, but the "
                                            f"rebuilt op {'has' if op.has_weight else 'has no'} weight")
        for field, q in zip(("a_bits", "b_bits"), op.quantizers()):
            bits = rec.get(field)
            if bits == q.bits and isinstance(bits, int) and not isinstance(bits, bool):
                continue  # (a float passthrough, e.g. a LayerNorm's affine weight, records 32)
            if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
                raise QuantizedModelFormatError(f"{where}: op {name}: {field}={bits!r} is not a bit-width "
                                                f"(an integer in {MIN_BITS}..{MAX_BITS})")
            if bits != q.bits:
                raise QuantizedModelFormatError(
                    f"{where}: op {name}: {field}={bits}, but the saved config (and plan) gives this op {q.bits} "
                    f"bits (w_bits, a_bits = {get_quant_info(qmodel).config.bits_for(name)}); "
                    f"the file was edited or is corrupt")
        enabled = rec.get("enabled")
        if not isinstance(enabled, bool):
            raise QuantizedModelFormatError(f"{where}: op {name}: enabled={enabled!r} must be true or false")
        if calibrated and not enabled:
            raise QuantizedModelFormatError(f"{where}: op {name}: enabled=false, but the model is recorded as "
                                            "calibrated (every op of a calibrated model is enabled)")


def finish_load(qmodel: nn.Module, meta: dict) -> nn.Module:
    """After the tensors are loaded: each op's enabled/frozen state and the model's QuantInfo from ``meta``."""
    ops = quant_ops(qmodel)
    for name, op in ops.items():
        op.set_enabled(meta["ops"][name]["enabled"])
        op.weight_frozen = bool(meta["frozen"]) and op.has_weight
    get_quant_info(qmodel).update_from_meta(meta)
    qmodel.eval()
    return qmodel

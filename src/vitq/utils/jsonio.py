"""Strict JSON: no ``NaN`` / ``Infinity`` in what vitq writes or reads.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default and reads them back, but they are
not JSON (RFC 8259) and other readers reject them. :func:`dumps_strict` refuses a non-finite float and names
its key path (``extra.summary.logits_sqnr_db``, ``ops['blocks.0.attn.qkv'].a_scale[3]``);
:func:`loads_strict` rejects those constants in a file.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vitq.errors import NonFiniteError


def _key(path: str, key: object) -> str:
    k = str(key)
    if not k.isidentifier():
        return f"{path}[{k!r}]"
    return f"{path}.{k}" if path else k


def find_non_finite(obj: Any, path: str = "") -> tuple[str, float] | None:
    """The first non-finite float in a JSON-able value as ``(key path, value)``, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "<value>", obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = find_non_finite(v, _key(path, k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = find_non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def dumps_strict(obj: Any, *, what: str = "JSON", **kwargs) -> str:
    """``json.dumps(obj, allow_nan=False, **kwargs)``; a NaN or infinite float raises :class:`NonFiniteError`
    naming ``what`` and the value's key path (keys that are not identifiers as ``['a.b']``)."""
    found = find_non_finite(obj)
    if found is not None:
        key, value = found
        raise NonFiniteError(f"{what}: {key} is {value}, which JSON cannot hold; "
                             "only finite numbers are written")
    return json.dumps(obj, allow_nan=False, **kwargs)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON value (only finite numbers are accepted)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        raise ValueError(f"{text} overflows to {value} (only finite numbers are accepted)")
    return value


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that also rejects ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow a float
    (raises ``ValueError``; malformed JSON raises ``json.JSONDecodeError``, a ``ValueError`` too)."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)

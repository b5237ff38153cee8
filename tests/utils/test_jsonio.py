"""Strict JSON: a non-finite value is never written (the error names its key path) nor read."""

import json
import math

import pytest

from vitq.errors import NonFiniteError
from vitq.utils.jsonio import dumps_strict, find_non_finite, loads_strict


def test_dumps_strict_names_the_key_path():
    doc = {"ops": {"blocks.0.attn.qkv": {"a_scale": [0.1, math.nan]}}, "summary": {"sqnr": 3.0}}
    assert find_non_finite(doc) == ("ops['blocks.0.attn.qkv'].a_scale[1]", doc["ops"]["blocks.0.attn.qkv"]["a_scale"][1])
    with pytest.raises(NonFiniteError, match=r"out\.json: ops\['blocks\.0\.attn\.qkv'\]\.a_scale\[1\] is nan"):
        dumps_strict(doc, what="out.json")
    with pytest.raises(NonFiniteError, match=r"summary\.sqnr is -inf"):
        dumps_strict({"summary": {"sqnr": -math.inf}})
    assert json.loads(dumps_strict({"a": [1.5, 2], "b": None}, indent=1)) == {"a": [1.5, 2], "b": None}


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '[-Infinity]', '{"a": 1e999}'])
def test_loads_strict_rejects_non_finite_numbers(text):
    assert not math.isfinite(json.loads(text)["a"] if text.startswith("{") else json.loads(text)[0])
    with pytest.raises(ValueError):
        loads_strict(text)


def test_loads_strict_reads_ordinary_json():
    assert loads_strict('{"a": [1, 2.5e-3, -0.0], "b": "NaN"}') == {"a": [1, 2.5e-3, -0.0], "b": "NaN"}

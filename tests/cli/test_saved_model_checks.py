"""``vitq eval --quantized`` refuses a saved model whose vitq.json was edited, naming the op and field."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_VIT_CLI_ARGS
from helpers_cli import vitq

from vitq.cli import main


@pytest.fixture
def run(folders):
    out = folders / "run"
    assert main(["quantize", *TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "w.safetensors"), "--calib",
                 str(folders / "calib"), "--num-calib", "2", "--method", "minmax", "--no-report", "--out", str(out)]) == 0
    return out


def _edit(run, fn):
    meta = json.loads((run / "vitq.json").read_text())
    fn(meta)
    (run / "vitq.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit,words", [
    (lambda m: m["ops"]["blocks.0.attn.qkv"].update(b_bits=4), ["blocks.0.attn.qkv", "b_bits"]),
    (lambda m: m["ops"]["blocks.0.attn.qkv"].update(a_bits=99), ["blocks.0.attn.qkv", "a_bits"]),
    (lambda m: [o.update(enabled=False) for o in m["ops"].values()], ["enabled"]),
], ids=["bits-8-to-4", "bits-99", "all-disabled"])
def test_edited_saved_model_is_an_error(run, folders, edit, words):
    _edit(run, edit)
    res = vitq("eval", "--quantized", str(run), "--data", str(folders / "test"))
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and line.startswith("vitq: error: "), res.stderr
    assert all(w in line for w in words), line
    assert "top1" not in res.stdout

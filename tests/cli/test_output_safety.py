"""``vitq quantize --out`` never destroys input: refusals come before any work, with one line and exit 2."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import TINY_VIT_CLI_ARGS
from helpers_cli import only_line, vitq


def _quantize(folders, out, *extra):
    return vitq("quantize", *TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "w.safetensors"), "--calib",
                str(folders / "calib"), "--num-calib", "2", "--method", "minmax", "--no-report", "--out", str(out),
                *extra)


def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_out_pointing_at_user_data_is_refused_untouched(folders):
    before = _tree(folders / "calib")
    res = _quantize(folders, folders / "calib")
    assert res.returncode == 2 and "is not a vitq output" in only_line(res)
    assert _tree(folders / "calib") == before  # the calibration images are still there, unchanged
    assert "calibrate" not in res.stderr  # refused before any calibration work


def test_out_naming_a_file_is_refused(folders):
    f = folders / "notes.txt"
    f.write_text("mine")
    res = _quantize(folders, f)
    assert res.returncode == 2 and str(f) in only_line(res)
    assert f.read_text() == "mine"


def test_out_dot_is_refused_and_leaves_no_temporary(folders):
    res = vitq("quantize", *TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "w.safetensors"), "--calib", "calib",
               "--num-calib", "2", "--method", "minmax", "--no-report", "--out", ".", cwd=folders)
    assert res.returncode == 2, res.stderr
    assert not [p for p in os.listdir(folders) if p.startswith(".") and "tmp" in p]


def test_replacing_an_earlier_output_needs_overwrite(folders):
    out = folders / "run"
    assert _quantize(folders, out).returncode == 0
    first = (out / "model.safetensors").read_bytes()
    res = _quantize(folders, out, "--bits", "6")
    assert res.returncode == 2 and "--overwrite" in only_line(res) and "calibrate" not in res.stderr
    assert (out / "model.safetensors").read_bytes() == first
    res = _quantize(folders, out, "--bits", "6", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "vitq.json").read_text())["config"]["w_bits"] == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_is_refused_before_calibration(folders):
    ro = folders / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    res = _quantize(folders, ro / "run")
    assert res.returncode == 2 and "calibrate" not in res.stderr


def test_outputs_respect_the_umask(folders):
    out = folders / "run"
    old = os.umask(0o022)
    try:
        assert _quantize(folders, out).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644


def test_nan_weight_is_refused_before_calibration_naming_the_tensor(folders):
    """A NaN in the float head weight was reported as top-1 13% with "agreement 100%" and NaN in vitq.json."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folders / "w.safetensors"))
    sd["head.weight"][0, 0] = float("nan")
    save_file(sd, str(folders / "nan.safetensors"))
    out = folders / "run"
    res = vitq("quantize", *TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "nan.safetensors"), "--calib",
               str(folders / "calib"), "--num-calib", "2", "--method", "minmax", "--no-report", "--out", str(out))
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and line.startswith("vitq: error: ") and "head.weight: 1 NaN" in line
    assert not out.exists() and "calibrate" not in res.stderr
    assert torch.isnan(load_file(str(folders / "nan.safetensors"))["head.weight"]).any()  # input untouched

"""`vitq quantize` killed with SIGKILL mid-calibration resumes when run again, and saves a model that is
byte-identical to an uninterrupted run's."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS, make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

import vitq
from vitq.calibration.checkpoint import META_FILE, checkpoint_path_for

SRC = Path(vitq.__file__).resolve().parents[1]
# 8 blocks and 16 images: after the first unit (the patch embedding) seconds of calibration remain, far
# more than the poll below needs to notice the first checkpoint and kill
ARGS = [*TINY_VIT_CLI_ARGS, "--model-arg", "depth=8", "--method", "liu2021", "--num-calib", "16", "--no-report"]


def _cmd(calib: Path, out: Path, *extra: str) -> list[str]:
    weights = calib.parent / "w.safetensors"  # a random init differs from process to process
    return [sys.executable, "-m", "vitq", "--threads", "1", "quantize", *ARGS, "--checkpoint", str(weights),
            "--calib", str(calib), "--out", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "VITQ_COMPILE": "0"}


@pytest.fixture
def calib(tmp_path):
    model = make_tiny_vit(depth=8, num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    g = torch.Generator().manual_seed(0)
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(16):
        Image.fromarray((torch.rand(40, 36, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return d


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not path.is_file():
        if proc.poll() is not None:
            pytest.fail(f"quantize exited ({proc.returncode}) before writing {path}:\n{proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"no {path} after {timeout:.0f}s")
        time.sleep(0.005)


def test_kill_9_then_rerun_resumes_and_matches(tmp_path, calib):
    out, ref = tmp_path / "out", tmp_path / "ref"
    ckpt = checkpoint_path_for(out)
    # the uninterrupted run, alongside the one to be killed
    ref_proc = subprocess.Popen(_cmd(calib, ref), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_cmd(calib, out), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ckpt / META_FILE, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    meta = json.loads((ckpt / META_FILE).read_text())
    assert 1 <= meta["units_done"] < len(meta["units"]) and not out.exists()  # killed mid-calibration
    done = meta["units_done"]

    res = subprocess.run(_cmd(calib, out), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"resuming calibration: {done} of {len(meta['units'])} units done (from {ckpt})" in res.stderr
    assert ref_proc.wait(timeout=600) == 0, ref_proc.stderr.read()
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert not ckpt.exists()  # removed once the model is saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "out", "ref", "w.safetensors"]  # no temporaries left


def test_no_resume_starts_over(tmp_path, calib, caplog):
    from vitq.cli import main

    out = tmp_path / "out"
    ckpt = checkpoint_path_for(out)
    ckpt.mkdir()
    (ckpt / META_FILE).write_text("{}")  # any checkpoint: --no-resume does not even read it
    args = ["quantize", *TINY_VIT_CLI_ARGS, "--calib", str(calib), "--num-calib", "4", "--num-candidates", "5",
            "--max-iters", "1", "--no-report", "--out", str(out), "--no-resume"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert "calibration checkpoint ignored: resuming is off" in caplog.text and "resuming calibration" not in caplog.text
    assert (out / "model.safetensors").is_file() and not ckpt.exists()

"""Where the full Fashion-MNIST is looked for, and scripts/setup_fmnist.sh driven by fake apt-get / dpkg."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vitq.data import fashion_mnist as fm
from vitq.data.idx import write_idx
from vitq.data.sources import load_images
from vitq.data.transforms import DataConfig
from vitq.errors import CalibrationDataError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup_fmnist.sh"
REL = Path("usr/share/datasets/fashion-mnist")


def _write_fmnist(root: Path, n: int = 6, value: int = 7) -> None:
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), value, np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)


@pytest.fixture
def no_system_fmnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "FASHION_MNIST_DIR", tmp_path / "system" / REL)
    monkeypatch.setenv("VITQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VITQ_FMNIST_DIR", raising=False)
    return tmp_path


def test_search_order_env_then_system_then_cache(no_system_fmnist, monkeypatch):
    tmp = no_system_fmnist
    dirs = fm.fashion_mnist_dirs()
    assert dirs == [tmp / "system" / REL, tmp / "cache" / "fmnist-deb" / REL]
    with pytest.raises(CalibrationDataError, match=r"not found in any of .*system.*fmnist-deb.*setup_fmnist\.sh"):
        fm.load_fashion_mnist("test")

    _write_fmnist(tmp / "cache" / "fmnist-deb" / REL, value=3)  # what setup_fmnist.sh unpacks
    assert fm.find_fashion_mnist_dir("test") == tmp / "cache" / "fmnist-deb" / REL
    x, y = fm.load_fashion_mnist("test")
    assert x.shape == (6, 1, 28, 28) and int(x.max()) == 3 and y.tolist() == list(range(6))

    _write_fmnist(tmp / "system" / REL, value=5)  # an installed package wins over the cache
    assert int(fm.load_fashion_mnist("train")[0].max()) == 5

    monkeypatch.setenv("VITQ_FMNIST_DIR", str(tmp / "mine"))
    _write_fmnist(tmp / "mine", n=4, value=9)  # and the explicit folder wins over both
    assert fm.fashion_mnist_dirs()[0] == tmp / "mine"
    cfg = DataConfig(input_size=(1, 28, 28), mean=(0.0,), std=(1.0,))
    got = load_images("fmnist:test", cfg)
    assert got.images.shape == (4, 1, 28, 28) and abs(float(got.images.max()) - 9 / 255) < 1e-6


def _fake_bin(tmp: Path, apt_body: str) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    scripts = {
        "apt-get": apt_body,
        # dpkg -x DEB DEST: "unpack" the prepared tree
        "dpkg": '[ "$1" = -x ] || exit 2\ncp -r "$FAKE_DEB_TREE"/. "$3"/\n',
        "sudo": '[ "$1" = -n ] && shift\nexec "$@"\n',  # never reach the real apt-get through sudo
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run(tmp: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", VITQ_CACHE_DIR=str(tmp / "cache"),
               VITQ_FMNIST_SYSTEM_DIR=str(tmp / "system" / REL), FAKE_DEB_TREE=str(tmp / "tree"))
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


@needs_bash
def test_setup_script_noop_when_installed(tmp_path):
    _write_fmnist(tmp_path / "system" / REL)
    proc = _run(tmp_path, _fake_bin(tmp_path, "echo called >> \"$FAKE_DEB_TREE.log\"; exit 100\n"))
    assert proc.returncode == 0 and "found in" in proc.stdout
    assert not Path(f"{tmp_path / 'tree'}.log").exists()  # apt-get never ran


@needs_bash
def test_setup_script_falls_back_to_download_and_unpack(tmp_path, monkeypatch):
    _write_fmnist(tmp_path / "tree" / REL, value=11)
    # install fails (no archive / no root); download writes the .deb into the working directory
    apt = 'for a; do pkg=$a; done\ncase "$1" in install) exit 100;; update) exit 0;; download) : > "${pkg}_1.0-1_all.deb";; esac\n'
    proc = _run(tmp_path, _fake_bin(tmp_path, apt))
    extracted = tmp_path / "cache" / "fmnist-deb" / REL
    assert proc.returncode == 0, proc.stderr
    assert f"into {extracted}" in proc.stdout
    # the loader finds the unpacked copy when the system folder is empty
    monkeypatch.setattr(fm, "FASHION_MNIST_DIR", tmp_path / "system" / REL)
    monkeypatch.setenv("VITQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VITQ_FMNIST_DIR", raising=False)
    assert int(fm.load_fashion_mnist("train")[0].max()) == 11
    assert _run(tmp_path, tmp_path / "bin").stdout.startswith("Fashion-MNIST: found in")  # idempotent


@needs_bash
def test_setup_script_fails_clearly(tmp_path):
    proc = _run(tmp_path, _fake_bin(tmp_path, "exit 100\n"))
    assert proc.returncode == 1
    assert "could not get Fashion-MNIST" in proc.stderr and "VITQ_FMNIST_DIR" in proc.stderr

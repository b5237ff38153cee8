"""Shared fixtures: tiny random-init models (CPU, seconds) and calibration images."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

# The search's fused kernels (torch.compile) cost seconds to compile per variant; unit tests use the
# eager ops, and tests/quantizers/test_kernels.py checks that the fused ones compute the same.
os.environ.setdefault("VITQ_COMPILE", "0")

timm = pytest.importorskip("timm")


def make_tiny_vit(seed: int = 0, **overrides):
    """A timm ViT small enough for unit tests: 32x32 input, 4x4=16 patches + class token, 2 blocks."""
    from vitq.models.loading import create_model

    torch.manual_seed(seed)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=10)
    kwargs.update(overrides)
    return create_model("timm:vit_tiny_patch16_224", **kwargs)


# The same tiny ViT (3 classes) built by the CLI from --model-arg flags, for CLI tests.
TINY_VIT_CLI_ARGS = ["--model", "timm:vit_tiny_patch16_224", "--model-arg", "img_size=32", "--model-arg", "patch_size=8",
                     "--model-arg", "embed_dim=48", "--model-arg", "depth=2", "--model-arg", "num_heads=2",
                     "--model-arg", "num_classes=3"]


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


def quantize_calibrated(model, calib, method: str, **cfg):
    """``model`` quantized with ``method`` and calibrated on ``calib``: (quantized model, report)."""
    import vitq

    q = vitq.quantize(model, vitq.QuantConfig(method=method, **cfg))
    return q, vitq.calibrate(q, calib, progress=False)


@pytest.fixture
def calib_images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=g)


@pytest.fixture
def test_images():
    g = torch.Generator().manual_seed(2)
    return torch.randn(32, 3, 32, 32, generator=g)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and a loaded CI machine makes more threads much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def folders(tmp_path):
    """A float checkpoint of the tiny ViT, 6 calibration images and 6 labelled test images."""
    g = torch.Generator().manual_seed(0)
    save_file({k: v.contiguous() for k, v in make_tiny_vit(num_classes=3).state_dict().items()},
              tmp_path / "w.safetensors")
    for i in range(6):
        arr = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        (tmp_path / "calib").mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "calib" / f"{i}.png")
        (tmp_path / "test" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "test" / f"c{i % 3}" / f"{i}.png")
    return tmp_path

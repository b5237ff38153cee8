"""The ``fmnist-vit`` zoo model loads from package assets and classifies the committed test subset."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from vitq.data.fashion_mnist import load_fmnist_subset
from vitq.data.transforms import normalize_uint8
from vitq.models.zoo import load_zoo_model, zoo_names


def test_registered():
    assert "fmnist-vit" in zoo_names()


def test_architecture_and_data_config():
    zm = load_zoo_model("fmnist-vit")
    m = zm.model
    assert isinstance(m, VisionTransformer) and not m.training
    assert len(m.blocks) >= 6
    assert m.patch_embed.num_patches == 49 and m.cls_token is not None
    assert zm.data_config.input_size == (1, 28, 28)
    assert zm.data_config.mean == (0.2860,) and zm.data_config.std == (0.3530,)
    assert "Fashion-MNIST" in zm.description


def test_accuracy_on_committed_subset():
    zm = load_zoo_model("fmnist-vit")
    images, labels = load_fmnist_subset("test")
    correct = 0
    with torch.inference_mode():
        for i in range(0, images.shape[0], 500):
            x = normalize_uint8(images[i : i + 500], zm.data_config)
            correct += (zm.model(x).argmax(-1) == labels[i : i + 500]).sum().item()
    acc = correct / images.shape[0]
    assert acc >= 0.88, f"fmnist-vit top-1 {acc:.4f} on the 2,000 committed test images, expected >= 0.88"

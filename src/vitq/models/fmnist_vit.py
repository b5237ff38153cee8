"""Zoo entry ``fmnist-vit``: a small timm ViT trained on Fashion-MNIST, shipped as package assets.

The weights and architecture live in ``vitq/assets/fmnist_vit`` (``model.safetensors`` and
``config.json``, both written by ``scripts/train_fmnist_vit.py``). timm is imported only when the
model is built, so registering the entry stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vitq.data.transforms import DataConfig
from vitq.errors import CheckpointError
from vitq.models.zoo import ZooModel, read_asset_config, register_zoo_model

logger = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "fmnist_vit"
FMNIST_VIT_DATA_CONFIG = DataConfig(
    input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), crop_pct=1.0, interpolation="bilinear"
)


def load_fmnist_vit_config(asset_dir: Path = ASSET_DIR) -> dict:
    """Read ``config.json`` of the fmnist-vit assets (architecture kwargs, training record)."""
    return read_asset_config(asset_dir, "fmnist-vit", "model_kwargs", "scripts/train_fmnist_vit.py")


@register_zoo_model("fmnist-vit")
def fmnist_vit(asset_dir: Path = ASSET_DIR) -> ZooModel:
    """Build the Fashion-MNIST ViT (6 blocks, 49 patch tokens + class token) in eval mode with its weights."""
    import safetensors.torch
    from timm.models.vision_transformer import VisionTransformer

    config = load_fmnist_vit_config(asset_dir)
    weights = asset_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(
            f"fmnist-vit weights {weights} not found; regenerate them with scripts/train_fmnist_vit.py"
        )
    model = VisionTransformer(**config["model_kwargs"])
    state = safetensors.torch.load_file(str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"fmnist-vit weights {weights} do not match config {config['model_kwargs']}: {e}"
        ) from e
    model.eval()
    logger.debug("loaded fmnist-vit from %s", asset_dir)
    kw = config["model_kwargs"]
    description = (
        f"timm VisionTransformer trained from scratch on Fashion-MNIST: embed_dim {kw['embed_dim']}, "
        f"depth {kw['depth']}, heads {kw['num_heads']}, mlp_ratio {kw['mlp_ratio']}, patch {kw['patch_size']} "
        f"on 28x28x1; test top-1 {config.get('test_top1', 'n/a')}"
    )
    return ZooModel(model, FMNIST_VIT_DATA_CONFIG, description)

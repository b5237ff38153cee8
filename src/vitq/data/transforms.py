"""Preprocessing: the data configuration a model expects and the PIL -> tensor transform built from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """What a model expects as input.

    Attributes:
        input_size: (channels, height, width) of the model input.
        mean, std: per-channel normalisation, one value per channel (in 0..1 pixel units).
        crop_pct: resize the shorter side to ``size / crop_pct`` then centre-crop ``size`` (timm semantics).
        interpolation: ``"bicubic"`` or ``"bilinear"``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d.get("crop_pct", 0.875)),
            interpolation=d.get("interpolation", "bicubic"),
            extra=dict(d.get("extra", {})),
        )


_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def preprocess_image(img: Image.Image, cfg: DataConfig) -> torch.Tensor:
    """Convert one PIL image to a normalised ``(C, H, W)`` float tensor as timm/HF eval transforms do.

    Grayscale, palette and RGBA images are converted to the model's channel count; any size is
    resized (shorter side to ``H / crop_pct``) and centre-cropped to ``(H, W)``.
    """
    c, h, w = cfg.input_size
    img = img.convert("L" if c == 1 else "RGB")
    scale_size = int(math.floor(max(h, w) / cfg.crop_pct))
    iw, ih = img.size
    if iw <= ih:
        nw, nh = scale_size, max(1, round(ih * scale_size / iw))
    else:
        nh, nw = scale_size, max(1, round(iw * scale_size / ih))
    img = img.resize((nw, nh), _RESAMPLE.get(cfg.interpolation, Image.BICUBIC))
    left, top = (nw - w) // 2, (nh - h) // 2
    img = img.crop((left, top, left + w, top + h))
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(h, w, -1)
    x = x.permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(cfg.mean[:c]).view(-1, 1, 1)
    std = torch.tensor(cfg.std[:c]).view(-1, 1, 1)
    return (x - mean) / std


def normalize_uint8(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Normalise a uint8 batch ``(N, C, H, W)`` already at the model resolution (e.g. Fashion-MNIST)."""
    c = cfg.input_size[0]
    x = images.float().div(255.0)
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        else:
            raise ValueError(f"cannot map {x.shape[1]} channels to the model's {c}")
    if tuple(x.shape[-2:]) != tuple(cfg.input_size[1:]):
        x = torch.nn.functional.interpolate(x, size=cfg.input_size[1:], mode=cfg.interpolation, align_corners=False)
    mean = torch.tensor(cfg.mean[:c]).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std[:c]).view(1, -1, 1, 1)
    return (x - mean) / std

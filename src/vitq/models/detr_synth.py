"""Zoo entry ``detr-synth``: a small Hugging Face DETR trained on the synthetic Fashion-MNIST detection set.

The model is a ``transformers`` :class:`DetrForObjectDetection` (sine position embedding, post-norm
encoder/decoder, learned object queries, class and box heads) whose CNN backbone is replaced by
:class:`SynthBackbone`, a small ResNet-18-style network (BasicBlocks with trainable BatchNorm, stride 16)
for 1-channel 128 px canvases: with no pretrained weights reachable, HF's own backbones would start from
random weights behind frozen (identity) BatchNorm, which trains poorly. Architecture and weights live in
``vitq/assets/detr_synth`` (``config.json``, ``model.safetensors`` stored as float16 and loaded as float32),
written by ``scripts/train_detr_synth.py``; the data set is :mod:`vitq.data.synth_detection`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from vitq.data.transforms import DataConfig
from vitq.errors import CheckpointError
from vitq.models.zoo import ZooModel, read_asset_config, register_zoo_model

logger = logging.getLogger(__name__)

ZOO_NAME = "detr-synth"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "detr_synth"
#: pixel statistics of the synthetic canvases (0..1 units), measured on 2,000 train canvases
SYNTH_MEAN = (0.13,)
SYNTH_STD = (0.22,)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm, identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + (x if self.downsample is None else self.downsample(x)))


class SynthBackbone(nn.Module):
    """ResNet-18-style backbone: stem (3x3 conv stride 2 + max-pool), then ``len(widths)`` stages of
    ``depth`` BasicBlocks, each stage after the first halving the resolution. Output stride
    ``4 * 2**(len(widths) - 1)``. ``forward`` returns a one-element list of feature maps, the form
    HF's ``DetrConvEncoder`` accepts from its backbone."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (32, 64, 128), depth: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.channels = [widths[-1]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.stages(self.stem(x))]


def build_detr_synth(arch: dict) -> nn.Module:
    """A randomly initialised :class:`DetrForObjectDetection` with a :class:`SynthBackbone`.

    ``arch`` keys: ``in_chans``, ``widths``, ``depth`` (backbone); ``d_model``, ``encoder_layers``,
    ``decoder_layers``, ``heads``, ``ffn_dim``, ``num_queries``, ``num_labels``; optional loss settings
    ``eos_coefficient``, ``class_cost``, ``bbox_cost``, ``giou_cost``, ``bbox_loss_coefficient``,
    ``giou_loss_coefficient``, ``dropout``.
    """
    from transformers import DetrConfig, DetrForObjectDetection
    from transformers.utils import logging as hf_logging

    loss_keys = ("eos_coefficient", "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient",
                 "giou_loss_coefficient", "dropout")
    config = DetrConfig(
        use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False,
        num_channels=arch.get("in_chans", 1), d_model=arch["d_model"],
        encoder_layers=arch["encoder_layers"], decoder_layers=arch["decoder_layers"],
        encoder_attention_heads=arch["heads"], decoder_attention_heads=arch["heads"],
        encoder_ffn_dim=arch["ffn_dim"], decoder_ffn_dim=arch["ffn_dim"], num_queries=arch["num_queries"],
        num_labels=arch["num_labels"], auxiliary_loss=True, attn_implementation="eager",
        **{k: arch[k] for k in loss_keys if k in arch},
    )
    # The timm ResNet-18 that HF builds here is replaced below; its notice that attn_implementation does not
    # reach timm is about that discarded module, so it is silenced.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = DetrForObjectDetection(config)
    finally:
        hf_logging.set_verbosity(previous)
    backbone = SynthBackbone(arch.get("in_chans", 1), tuple(arch["widths"]), arch["depth"])
    encoder = model.model.backbone
    encoder.model = backbone
    encoder.intermediate_channel_sizes = backbone.channels
    model.model.input_projection = nn.Conv2d(backbone.channels[-1], arch["d_model"], kernel_size=1)
    return model


def detr_synth_data_config(arch: dict) -> DataConfig:
    """1-channel canvases at their own size (no resize, no crop), normalised with the set's statistics."""
    size = int(arch.get("image_size", 128))
    return DataConfig(input_size=(arch.get("in_chans", 1), size, size), mean=SYNTH_MEAN, std=SYNTH_STD,
                      crop_pct=1.0, interpolation="bilinear",
                      extra={"task": "detection", "dataset": "synthetic fashion-mnist detection"})


def load_detr_synth_config(asset_dir: Path = ASSET_DIR) -> dict:
    return read_asset_config(asset_dir, "detr-synth", "arch", "scripts/train_detr_synth.py")


@register_zoo_model(ZOO_NAME)
def detr_synth(asset_dir: Path = ASSET_DIR) -> ZooModel:
    """The trained synthetic-set DETR in eval mode (float32)."""
    import safetensors.torch

    config = load_detr_synth_config(asset_dir)
    weights = asset_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"detr-synth weights {weights} not found; regenerate them with "
                              "scripts/train_detr_synth.py")
    model = build_detr_synth(config["arch"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in safetensors.torch.load_file(str(weights)).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"detr-synth weights {weights} do not match config {config['arch']}: {e}") from e
    model.eval()
    a = config["arch"]
    description = (f"HF DetrForObjectDetection, ResNet-18-style backbone {a['widths']}, d_model {a['d_model']}, "
                   f"{a['encoder_layers']}+{a['decoder_layers']} layers, {a['num_queries']} queries, trained on "
                   f"synthetic Fashion-MNIST detection; test mAP {config.get('test_map', 'n/a')}")
    return ZooModel(model, detr_synth_data_config(a), description)

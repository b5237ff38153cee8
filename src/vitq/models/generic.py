"""The adapter for every other vision transformer: nothing per family.

It takes any model whose forward computes at least one attention product (Q·K^T / attn·V, an SDPA call,
HF's eager or sdpa attention; counted by :mod:`vitq.models.census`) and whose input size it can tell.
Linears and Conv2d layers are swapped by type (the registry), as for every family; each module that
computes attention products in its own forward (the innermost such module: timm's ``Attention``,
``WindowAttention``, ``ClassAttn``, ``XCA``, HF's ``*Attention``/``*SelfAttention``, ...) is swapped for
its captured subclass (:func:`vitq.nn.capture.captured_class`), whose products become
:class:`~vitq.nn.qops.QuantMatMul` modules found on one recording forward.

Calibration units are found from the module tree: the largest modules that hold quantized ops and at
most one attention module (a transformer block, a patch embedding, a downsampling layer, a conv stage),
in the order the forward first calls them. A model whose forward computes no attention is not matched;
:func:`vitq.models.base.get_adapter` then names its class and says so.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from vitq.data.transforms import DataConfig
from vitq.errors import VitqError
from vitq.models.base import ModelAdapter, register_adapter
from vitq.models.census import activation_forward, take_census
from vitq.nn.capture import CapturedAttentionMixin, captured_class
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import OpQuantSpec, QuantOp, quant_ops

log = logging.getLogger(__name__)

#: classification heads of Hugging Face models, by attribute of the top-level model
HF_HEAD_ATTRS = ("classifier", "cls_classifier", "distillation_classifier")
HF_STANDARD = (0.5, 0.5, 0.5)


def example_images(data_config: DataConfig, n: int = 2) -> torch.Tensor:
    """Seeded random images of the model's input size (for recording forwards, not for calibration)."""
    return torch.randn(n, *data_config.input_size, generator=torch.Generator().manual_seed(0))


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[1])
    return None


def infer_data_config(model: nn.Module) -> DataConfig | None:
    """The input a timm or Hugging Face model expects, from what it records; ``None`` if it records nothing.

    HF: ``config.image_size`` / ``num_channels`` (mean/std 0.5, the usual HF processor's). timm: the first
    ``img_size`` a module records (the patch embedding's; a model built with another ``img_size`` than its
    pretrained config's expects that one), else the pretrained config's ``input_size``.
    """
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "image_size", None) is not None:
        size = _pair(config.image_size)
        ch = int(getattr(config, "num_channels", 3))
        if size is not None:
            return DataConfig(input_size=(ch, *size), mean=(HF_STANDARD[0],) * ch, std=(HF_STANDARD[0],) * ch,
                              crop_pct=1.0, interpolation="bicubic")
    pcfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(pcfg, dict):
        return None
    size = None
    for m in model.modules():
        size = _pair(getattr(m, "img_size", None))
        if size is not None:
            break
    ch = int(getattr(model, "in_chans", pcfg.get("input_size", (3,))[0]))
    if size is None and pcfg.get("input_size"):
        size = tuple(pcfg["input_size"][1:])
    if size is None:
        return None
    mean = tuple(pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(pcfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != ch:
        mean, std = (sum(mean) / len(mean),) * ch, (sum(std) / len(std),) * ch
    return DataConfig(input_size=(ch, *size), mean=mean, std=std, crop_pct=float(pcfg.get("crop_pct", 0.875)),
                      interpolation=str(pcfg.get("interpolation", "bicubic")))


def _forward(model: nn.Module, images: torch.Tensor):
    return model(images)


def attention_hosts(census_attn: dict[str, int]) -> list[str]:
    """Modules to capture: those computing attention products in their own forward (the root cannot be swapped)."""
    return [n for n in census_attn if n]


def install_capture(model: nn.Module, hosts: list[str], spec_for, data_config: DataConfig) -> dict[str, int]:
    """Swap each host module for its captured subclass and record its products on one forward.

    ``spec_for(name)`` gives the :class:`OpQuantSpec` of a host's products. Returns ``{host: products}``.
    """
    new: list[CapturedAttentionMixin] = []
    for name in hosts:
        module = model.get_submodule(name)
        if isinstance(module, (QuantOp, QuantAttentionMixin)):
            continue
        q = captured_class(type(module)).from_module(module, spec_for(name))
        q._vitq_label = name
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, q)
        new.append(q)
    if not new:
        return {}
    for q in new:
        q._vitq_sites, q._vitq_recording = (), True
    try:
        activation_forward(model, _forward, example_images(data_config))()
    finally:
        for q in new:
            q._vitq_recording = False
    device = next(model.parameters()).device
    for q in new:
        for n in q.products():
            getattr(q, n).to(device)
    return {q._vitq_label: len(q.products()) for q in new}


def partition_units(model: nn.Module, data_config: DataConfig) -> list[str]:
    """The calibration units of a swapped model: the largest modules the forward calls that hold quantized
    ops and at most one attention module, in the order the forward first calls them (module docstring).
    Containers the forward never calls itself (``nn.ModuleList``) are split into their members."""
    ops = list(quant_ops(model))
    attn = [n for n, m in model.named_modules() if isinstance(m, QuantAttentionMixin)]
    first: dict[str, int] = {}

    def seen(name: str):
        def hook(*_):  # returns None: a pre-hook's return value would replace the module's inputs
            first.setdefault(name, len(first))
        return hook

    handles = [m.register_forward_pre_hook(seen(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            _forward(model, example_images(data_config))
    finally:
        for h in handles:
            h.remove()

    def under(n: str, prefix: str) -> bool:
        return not prefix or n == prefix or n.startswith(prefix + ".")

    def visit(prefix: str, module: nn.Module) -> list[str]:
        if not any(under(n, prefix) for n in ops):
            return []
        if prefix and prefix in first and (isinstance(module, QuantOp) or sum(under(a, prefix) for a in attn) <= 1):
            return [prefix]
        if isinstance(module, QuantOp):
            raise VitqError(f"{type(model).__name__}: quantized op {prefix} is never called by the forward; "
                            "vitq cannot calibrate it")
        out = []
        for cname, child in module.named_children():
            out += visit(f"{prefix}.{cname}" if prefix else cname, child)
        return out

    return sorted(visit("", model), key=first.__getitem__)


@register_adapter
class GenericAdapter(ModelAdapter):
    name = "generic"
    description = ("any other timm / Hugging Face / custom vision transformer whose forward computes attention "
                   "(SDPA, explicit Q·K^T and attn·V matmuls, HF eager/sdpa attention)")
    #: swap Linears/Conv2ds the forward never calls? (no: they would never be calibrated)
    skip_unused = True
    captures = True

    def data_config(self, model: nn.Module) -> DataConfig:
        dc = getattr(model, "vitq_data_config", None) or infer_data_config(model)
        if dc is None:
            raise VitqError(f"{type(model).__name__}: vitq cannot tell its input size; set model.vitq_data_config "
                            "= vitq.data.transforms.DataConfig(input_size=(C, H, W))")
        return dc

    def why_not(self, model: nn.Module) -> str | None:
        """Why this adapter does not take ``model`` (``None`` when it does)."""
        dc = getattr(model, "vitq_data_config", None) or infer_data_config(model)
        if dc is None:
            return (f"vitq cannot tell the input size of {type(model).__name__} (no timm pretrained_cfg, no HF "
                    "config.image_size); set model.vitq_data_config to a DataConfig to let it probe the forward")
        try:
            census = take_census(model, _forward, example_images(dc))
        except Exception as e:  # noqa: BLE001 (a model that cannot run on the probe input is not matched)
            return f"{type(model).__name__} failed on a {tuple(dc.input_size)} probe input: {type(e).__name__}: {e}"
        if census.attn_total == 0:
            return (f"{type(model).__module__}.{type(model).__name__} has no transformer blocks: its forward computes no "
                    "attention product (no Q·K^T or attn·V matmul, no scaled_dot_product_attention call)")
        return None

    def matches(self, model: nn.Module) -> bool:
        return self.why_not(model) is None

    def calibration_units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        from vitq.info import get_quant_info

        units = get_quant_info(model).units
        if units is None:
            raise VitqError("calibration units are found by vitq.quantize; this model was not prepared by it")
        return [(u, model.get_submodule(u)) for u in units]

    def head_names(self, model: nn.Module) -> list[str]:
        names = {id(m): n for n, m in model.named_modules()}
        heads: list[nn.Module] = []
        get = getattr(model, "get_classifier", None)
        if callable(get):
            try:
                heads.append(get())
            except Exception:  # noqa: BLE001 (some timm models need arguments; no head then)
                pass
            heads.append(getattr(model, "head_dist", None))
        heads += [getattr(model, a, None) for a in HF_HEAD_ATTRS]
        out: list[str] = []
        for h in heads:
            if not isinstance(h, nn.Module) or id(h) not in names:
                continue
            if isinstance(h, nn.Linear):
                out.append(names[id(h)])
            else:
                out += [names[id(m)] for m in h.modules() if isinstance(m, nn.Linear)]
        return list(dict.fromkeys(out))


def spec_factory(config, recipe):
    """``spec_for(name)`` of :func:`install_capture` from a :class:`~vitq.config.QuantConfig`."""

    def spec_for(name: str) -> OpQuantSpec:
        w_bits, a_bits = config.bits_for(name)
        return OpQuantSpec(w_bits=w_bits, a_bits=a_bits, per_channel_weights=config.per_channel_for(name, recipe))

    return spec_for

"""The zoo benchmark: many timm and Hugging Face vision transformers, each built from a small config with
random initialisation (nothing downloaded), quantized W8A8, calibrated on a few images, exported.

One row per model (:func:`run_entry`):

- ``linears`` / ``convs`` / ``attn_matmuls``: what the *float* model computes, counted on one forward by
  :func:`vitq.models.census.take_census` (``F.linear`` / ``F.conv*d`` calls by owning module; products of
  two input-dependent tensors, SDPA counting two), independently of the quantizer;
- ``*_quantized``: the same count on the quantized model (calls made by vitq's quantized ops);
- ``disabled_max_abs_diff``: max |logits| difference of the quantized model with quantization disabled vs
  the float model (the classifier head re-initialised with std 0.5 so that logits are O(1));
- ``w8a8_sqnr_db``: logits SQNR of the calibrated W8A8 model (every Linear, the head included, every
  Conv2d, every attention product) vs float, on images it was not calibrated on;
- ``export_ok``, ``ort_sqnr_db``, ``ort_agreement``: the W8A8 ONNX QDQ file in ONNX Runtime vs the
  simulation (logits SQNR; fraction of rows whose argmax agrees);
- ``passed``: every Linear and attention product quantized, disabled diff <= 1e-5, SQNR >= 20 dB, exported.

``benchmarks/zoo.py`` runs every entry and writes ``benchmarks/results/zoo.json``; :func:`zoo_table` makes
the README's table from it.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

MAX_DISABLED_DIFF = 1e-5
MIN_SQNR_DB = 20.0


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: ``source`` ``timm`` (``arch`` a timm name) or ``hf`` (``arch`` a transformers
    model class, ``config`` its config class), built with ``kwargs``."""

    family: str
    source: str
    arch: str
    kwargs: dict = field(default_factory=dict)
    config: str = ""
    notes: str = ""
    #: ``(C, H, W)`` when the model does not record the size it was built for
    input_size: tuple[int, int, int] | None = None
    #: build this timm class directly (``module:Class``) when the architecture's factory fixes the depths
    cls: str = ""
    #: in the test suite's fast subset
    fast: bool = False

    @property
    def model(self) -> str:
        return f"{self.source}:{self.arch}"


def _vit(**kw) -> dict:
    return {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "num_classes": 10, **kw}


def _hf(**kw) -> dict:
    return {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96,
            "image_size": 32, "patch_size": 8, "num_labels": 10, **kw}


_SWIN = {"img_size": 64, "patch_size": 4, "window_size": 4, "embed_dim": 24, "depths": (1, 1), "num_heads": (2, 4),
         "num_classes": 10}
_HF_SWIN = {"image_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 24, "depths": [1, 1],
            "num_heads": [2, 4], "num_labels": 10}

ENTRIES: tuple[ZooEntry, ...] = (
    # timm
    ZooEntry("vit", "timm", "vit_tiny_patch16_224", _vit(), fast=True),
    ZooEntry("deit", "timm", "deit_tiny_distilled_patch16_224", _vit(), notes="distillation token, two heads"),
    ZooEntry("deit3", "timm", "deit3_small_patch16_224", _vit(), notes="LayerScale"),
    ZooEntry("vit-reg", "timm", "vit_small_patch14_reg4_dinov2", _vit(init_values=1e-5),
             notes="register tokens, LayerScale"),
    ZooEntry("flexivit", "timm", "flexivit_small", _vit()),
    ZooEntry("vit_relpos", "timm", "vit_relpos_small_patch16_224", _vit(), notes="relative position bias (MLP)"),
    ZooEntry("beit", "timm", "beit_base_patch16_224", _vit(), fast=True,
             notes="relative position bias; q/v bias outside the qkv Linear (F.linear)"),
    ZooEntry("eva02", "timm", "eva02_tiny_patch14_224", _vit(patch_size=7, img_size=28), fast=True,
             notes="rotary embeddings, SwiGLU"),
    ZooEntry("cait", "timm", "cait_xxs24_224", _vit(depth=2),
             notes="talking-heads attention, class attention, LayerScale"),
    ZooEntry("xcit", "timm", "xcit_nano_12_p16_224", {"img_size": 32, "patch_size": 16, "embed_dim": 48,
                                                        "depth": 2, "num_heads": 2, "num_classes": 10},
             notes="cross-covariance attention, class attention; conv patch embedding"),
    ZooEntry("pit", "timm", "pit_ti_224", {"img_size": 64, "num_classes": 10, "depth": (1, 1, 1)},
             notes="pooling by depthwise conv; distilled variants have two heads"),
    ZooEntry("convit", "timm", "convit_tiny", _vit(), notes="gated positional self-attention"),
    ZooEntry("tnt", "timm", "tnt_s_patch16_224", {"img_size": 32, "patch_size": 16, "embed_dim": 48,
                                                   "inner_dim": 12, "depth": 2, "num_heads_outer": 2,
                                                   "num_heads_inner": 2, "num_classes": 10},
             notes="inner (pixel) and outer (patch) attention"),
    ZooEntry("crossvit", "timm", "crossvit_tiny_240", {"img_size": 48, "img_scale": (1.0, 1.0), "embed_dim": (24, 48),
                                                        "depth": ((1, 1, 0),), "num_heads": (2, 2),
                                                        "mlp_ratio": (2, 2, 1), "num_classes": 10},
             input_size=(3, 48, 48),
             notes="two branches, cross attention"),
    ZooEntry("samvit", "timm", "samvit_base_patch16", {"img_size": 64, "patch_size": 16, "embed_dim": 48,
                                                        "depth": 2, "num_heads": 2, "num_classes": 10,
                                                        "global_attn_indexes": (1,), "window_size": 2,
                                                        "global_pool": "avg"},
             notes="SAM encoder: windowed + global attention, decomposed relative position in the SDPA mask"),
    ZooEntry("swin", "timm", "swin_tiny_patch4_window7_224", _SWIN),
    ZooEntry("swinv2", "timm", "swinv2_tiny_window8_256", {**_SWIN, "window_size": 4}, fast=True,
             notes="cosine attention with a learned logit scale, continuous position bias MLP"),
    ZooEntry("levit", "timm", "levit_128s", {"img_size": 64, "num_classes": 10}, input_size=(3, 64, 64),
             notes="attention bias; Linear + BatchNorm; distillation head"),
    ZooEntry("mvitv2", "timm", "mvitv2_tiny", {"img_size": 64, "num_classes": 10,
                                               "cfg": ("MultiScaleVitCfg", {"depths": (1, 1, 1, 1), "embed_dim": 16,
                                                                            "num_heads": 1})},
             cls="timm.models.mvitv2:MultiScaleVit", input_size=(3, 64, 64),
             notes="pooling attention, decomposed relative position"),
    ZooEntry("hiera", "timm", "hiera_tiny_224", {"img_size": 64, "num_classes": 10, "embed_dim": 24,
                                                 "num_heads": 1, "stages": (1, 1, 1, 1)}, input_size=(3, 64, 64),
             notes="mask-unit attention with pooling"),
    ZooEntry("twins", "timm", "twins_svt_small", {"img_size": 64, "num_classes": 10, "embed_dims": (24, 48),
                                                  "num_heads": (1, 2), "mlp_ratios": (2, 2), "depths": (1, 1),
                                                  "sr_ratios": (2, 1), "wss": (2, 2)},
             notes="locally grouped + spatially reduced attention, conv position encoding"),
    ZooEntry("coat", "timm", "coat_lite_tiny", {"img_size": 64, "num_classes": 10, "embed_dims": (16, 24, 32, 48),
                                                "serial_depths": (1, 1, 1, 1), "num_heads": 8},
             notes="factorized attention, conv relative position"),
    ZooEntry("volo", "timm", "volo_d1_224", {"img_size": 64, "num_classes": 10, "layers": (1, 1, 1, 1),
                                             "embed_dims": (32, 48, 48, 48), "num_heads": (1, 2, 2, 2)},
             cls="timm.models.volo:VOLO", input_size=(3, 64, 64),
             notes="outlook attention, class attention; ONNX: nn.Fold needs opset 18 (Col2Im), where the export "
                   "fails (see export_error)"),
    ZooEntry("gcvit", "timm", "gcvit_xxtiny", {"img_size": 64, "num_classes": 10, "depths": (1, 1, 1, 1),
                                               "num_heads": (1, 2, 2, 4), "embed_dim": 16, "window_size": (4, 4, 4, 2)},
             cls="timm.models.gcvit:GlobalContextVit", input_size=(3, 64, 64),
             notes="global query attention; conv stem and downsampling"),
    ZooEntry("maxvit", "timm", "maxvit_nano_rw_256", {"img_size": 64, "num_classes": 10}, input_size=(3, 64, 64),
             notes="block + grid attention; MBConv stages"),
    ZooEntry("efficientvit", "timm", "efficientvit_m0", {"img_size": 64, "num_classes": 10}, input_size=(3, 64, 64),
             notes="cascaded group attention (EfficientViT MSRA)"),
    ZooEntry("efficientvit-mit", "timm", "efficientvit_b0", {"num_classes": 10}, input_size=(3, 64, 64),
             notes="ReLU linear attention (EfficientViT MIT); MBConv stages"),
    ZooEntry("tiny_vit", "timm", "tiny_vit_5m_224", {"num_classes": 10, "embed_dims": (16, 24, 32, 48),
                                                     "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2),
                                                     "window_sizes": (2, 2, 2, 2)}, input_size=(3, 64, 64),
             notes="windowed attention with attention bias; MBConv stage"),
    # Hugging Face
    ZooEntry("vit", "hf", "ViTForImageClassification", _hf(), config="ViTConfig"),
    ZooEntry("deit", "hf", "DeiTForImageClassificationWithTeacher", _hf(), config="DeiTConfig",
             notes="distillation token"),
    ZooEntry("beit", "hf", "BeitForImageClassification", _hf(use_relative_position_bias=True), config="BeitConfig",
             fast=True, notes="relative position bias"),
    ZooEntry("data2vec-vision", "hf", "Data2VecVisionForImageClassification",
             _hf(use_relative_position_bias=True), config="Data2VecVisionConfig"),
    ZooEntry("dinov2-registers", "hf", "Dinov2WithRegistersForImageClassification",
             _hf(num_register_tokens=4, patch_size=4, image_size=16), config="Dinov2WithRegistersConfig",
             notes="register tokens, LayerScale; ONNX: HF interpolates the position embeddings whenever it is "
                   "traced, with antialiased bicubic (aten::_upsample_bicubic2d_aa), which has no ONNX op"),
    ZooEntry("swin", "hf", "SwinForImageClassification", _HF_SWIN, config="SwinConfig"),
    ZooEntry("swinv2", "hf", "Swinv2ForImageClassification", _HF_SWIN, config="Swinv2Config",
             notes="cosine attention, continuous position bias"),
    ZooEntry("clip", "hf", "CLIPVisionModel", {k: v for k, v in _hf().items() if k != "num_labels"},
             config="CLIPVisionConfig", fast=True, notes="pooled output (no classifier)"),
    ZooEntry("siglip", "hf", "SiglipVisionModel", {k: v for k, v in _hf().items() if k != "num_labels"},
             config="SiglipVisionConfig", notes="pooled output through the MAP head, a torch nn.MultiheadAttention "
             "(packed in_proj, out_proj, its two products) swapped for vitq's QuantMultiheadAttention"),
    ZooEntry("vitmae", "hf", "ViTMAEModel", {**{k: v for k, v in _hf().items() if k != "num_labels"},
                                             "mask_ratio": 0.0},
             config="ViTMAEConfig", notes="encoder called with noise=arange (patch order kept, nothing masked)"),
    ZooEntry("yolos", "hf", "YolosForObjectDetection", {**_hf(), "image_size": [32, 32], "num_detection_tokens": 5},
             config="YolosConfig", fast=True, notes="detection tokens; logits of the class head"),
)


class _MAEEncoder(nn.Module):
    """ViTMAEModel with a fixed ``noise`` (``arange``): the patch order kept, so its forward is deterministic."""

    def __init__(self, mae: nn.Module):
        super().__init__()
        self.mae = mae
        n = (mae.config.image_size // mae.config.patch_size) ** 2
        self.register_buffer("noise", torch.arange(n, dtype=torch.float32)[None], persistent=False)

    def forward(self, pixel_values: torch.Tensor):
        return self.mae(pixel_values, noise=self.noise.expand(pixel_values.shape[0], -1))


def build(entry: ZooEntry, seed: int = 0) -> nn.Module:
    """The float model of ``entry``: random init (seeded), eval mode, its classifier head (if any) scaled so
    that the logits have standard deviation 1 (abs-diff checks then mean something)."""
    torch.manual_seed(seed)
    if entry.cls:
        import importlib

        mod, _, name = entry.cls.partition(":")
        kwargs = dict(entry.kwargs)
        if "cfg" in kwargs:  # a config dataclass of the same module: ("ClassName", {fields})
            cfg_cls, fields = kwargs["cfg"]
            kwargs["cfg"] = getattr(importlib.import_module(mod), cfg_cls)(**fields)
        model = getattr(importlib.import_module(mod), name)(**kwargs)
    elif entry.source == "timm":
        import timm

        model = timm.create_model(entry.arch, pretrained=False, **entry.kwargs)
    else:
        import transformers

        config = getattr(transformers, entry.config)(**entry.kwargs)
        model = getattr(transformers, entry.arch)(config)
        if entry.arch == "ViTMAEModel":
            from vitq.models.generic import infer_data_config

            dc = infer_data_config(model)
            model = _MAEEncoder(model)
            model.vitq_data_config = dc
    model.eval()
    if entry.input_size is not None:
        from vitq.data.transforms import DataConfig

        model.vitq_data_config = DataConfig(input_size=tuple(entry.input_size))
    from vitq.models.base import get_adapter

    adapter = get_adapter(model)
    heads = [model.get_submodule(n) for n in adapter.head_names(model)]
    if heads:
        dc = getattr(model, "vitq_data_config", None) or adapter.data_config(model)
        x = torch.randn(8, *dc.input_size, generator=torch.Generator().manual_seed(seed + 7))
        std = _logits(model, x).std().item()
        if std < 1e-6:  # a zero-initialised head (Hiera): random weights first
            with torch.no_grad():
                for head in heads:
                    head.weight.normal_(0.0, 0.02)
            std = _logits(model, x).std().item()
        with torch.no_grad():
            for head in heads:
                head.weight.mul_(1.0 / std)
                if head.bias is not None:
                    head.bias.mul_(1.0 / std)
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from vitq.eval.metrics import logits_of

    with torch.no_grad():
        return logits_of(model(x)).float()


def run_entry(entry: ZooEntry, *, num_calib: int = 8, num_test: int = 8, export: bool = True,
              method: str = "liu2021", num_candidates: int = 16, max_iters: int = 1) -> dict:
    """Build, count, quantize (W8A8, head included), calibrate, freeze and export one model; its row."""
    import vitq
    from vitq.eval.metrics import sqnr_db
    from vitq.info import default_forward, get_quant_info
    from vitq.models.base import get_adapter
    from vitq.models.census import take_census

    t0 = time.perf_counter()
    row: dict = {"model": entry.model, "family": entry.family, "source": entry.source, "origin": "vitq"}
    notes = [entry.notes] if entry.notes else []
    try:
        model = build(entry)
        adapter = get_adapter(model)
        dc = getattr(model, "vitq_data_config", None) or adapter.data_config(model)
        g = torch.Generator().manual_seed(1)
        calib = torch.randn(num_calib, *dc.input_size, generator=g)
        test = torch.randn(num_test, *dc.input_size, generator=g)
        census = take_census(model, default_forward, test[:2]).counts()
        row.update(adapter=adapter.name, input_size=list(dc.input_size),
                   linears=census["linear"]["total"], convs=census["conv"]["total"],
                   attn_matmuls=census["attn_matmul"]["total"])
        ref = _logits(model, test)
        config = vitq.QuantConfig(method=method, w_bits=8, a_bits=8, quantize_head=True,
                                  num_candidates=num_candidates, max_iters=max_iters)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = vitq.quantize(model, config)
        cov = get_quant_info(q).coverage
        row.update(linears_quantized=cov["linear"]["quantized"], convs_quantized=cov["conv"]["quantized"],
                   attn_matmuls_quantized=cov["attn_matmul"]["quantized"], uncaptured=cov["uncaptured"],
                   warnings=[str(w.message) for w in caught if "vitq" in type(w.message).__module__ or
                             type(w.message).__name__.startswith("Partial")])
        with vitq.quantization_disabled(q):
            row["disabled_max_abs_diff"] = float((_logits(q, test) - ref).abs().max())
        vitq.calibrate(q, calib, progress=False)
        vitq.freeze(q)
        out = _logits(q, test)
        row["w8a8_sqnr_db"] = round(sqnr_db(ref, out), 2)
        row["export_ok"] = False
        if export:
            row.update(_export_row(q, test, out))
        if row["convs_quantized"] < row["convs"]:
            notes.append(f"{row['convs'] - row['convs_quantized']} convolution(s) left float (not Conv2d)")
    except Exception as e:  # noqa: BLE001 (a row records the failure; the benchmark goes on)
        row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    row["notes"] = "; ".join(notes)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["passed"] = passed(row)
    return row


def _export_row(q: nn.Module, test: torch.Tensor, sim: torch.Tensor) -> dict:
    from vitq.eval.metrics import sqnr_db
    from vitq.export.onnx_export import export_onnx
    from vitq.export.ort_runtime import OrtModel

    extra: dict = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            try:
                path = export_onnx(q, Path(d) / "model.onnx", example=test[:2])
            except Exception as e:  # noqa: BLE001 (an op that needs a newer opset: Col2Im of nn.Fold is opset 18)
                if "version 18" not in str(e):
                    raise
                path = export_onnx(q, Path(d) / "model.onnx", example=test[:2], opset=18)
                extra["opset"] = 18
            ort = OrtModel(path, threads=1)(test).float().reshape(sim.shape)
    except Exception as e:  # noqa: BLE001
        return {"export_ok": False, "export_error": f"{type(e).__name__}: {str(e)[:300]}"}
    rows_ort, rows_sim = ort.reshape(-1, ort.shape[-1]), sim.reshape(-1, sim.shape[-1])
    s = sqnr_db(sim, ort)
    return {**extra, "export_ok": True, "ort_sqnr_db": None if math.isinf(s) else round(s, 2),
            "ort_agreement": round((rows_ort.argmax(-1) == rows_sim.argmax(-1)).float().mean().item(), 4)}


def passed(row: dict) -> bool:
    """Every criterion of the zoo: all Linears and attention products quantized, none uncaptured, disabled
    quantization within 1e-5 of float, W8A8 logits SQNR >= 20 dB, ONNX export works."""
    try:
        return (row["linears_quantized"] == row["linears"] and row["attn_matmuls"] > 0
                and row["attn_matmuls_quantized"] == row["attn_matmuls"] and not row["uncaptured"]
                and row["disabled_max_abs_diff"] <= MAX_DISABLED_DIFF and row["w8a8_sqnr_db"] >= MIN_SQNR_DB
                and row["export_ok"] is True)
    except (KeyError, TypeError):
        return False


def zoo_table(rows: list[dict]) -> str:
    """The README's supported-model table, from ``benchmarks/results/zoo.json``'s rows."""
    lines = ["| family | model | Linears q/total | attn products q/total | disabled diff | W8A8 SQNR dB | ONNX | all criteria | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lin = f"{r.get('linears_quantized', '-')}/{r.get('linears', '-')}"
        att = f"{r.get('attn_matmuls_quantized', '-')}/{r.get('attn_matmuls', '-')}"
        diff = f"{r['disabled_max_abs_diff']:.1e}" if "disabled_max_abs_diff" in r else "-"
        sq = f"{r['w8a8_sqnr_db']:.1f}" if "w8a8_sqnr_db" in r else "-"
        onnx = "yes" if r.get("export_ok") else "no"
        note = r.get("notes", "") or ""
        if r.get("error"):
            note = (note + "; " if note else "") + "error: " + r["error"].split(":", 1)[0]
        lines.append(f"| {r['family']} | `{r['model']}` | {lin} | {att} | {diff} | {sq} | {onnx} | "
                     f"{'yes' if r.get('passed') else 'no'} | {note} |")
    return "\n".join(lines)


def select(names: list[str] | None = None, fast: bool = False) -> list[ZooEntry]:
    """Entries by ``model`` or ``family`` name (all when ``names`` is empty), only the fast subset if asked."""
    out = [e for e in ENTRIES if (not fast or e.fast)]
    if names:
        out = [e for e in out if e.model in names or e.family in names or f"{e.source}:{e.family}" in names]
    return out


RowCallback = Callable[[dict], None]

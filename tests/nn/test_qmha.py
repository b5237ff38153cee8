"""torch's nn.MultiheadAttention quantized (vitq.nn.qmha): the float module's semantics, W8A8 quality, and the
whole lifecycle (coverage, liu2021 calibration, freeze, save/load, ONNX QDQ in ONNX Runtime) on a tiny model."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn as nn

import vitq
from vitq.data.transforms import DataConfig
from vitq.eval.metrics import sqnr_db
from vitq.info import default_forward
from vitq.models.census import take_census
from vitq.nn.qmha import QuantMultiheadAttention
from vitq.nn.qops import OpQuantSpec, QuantLinear, QuantMatMul, quant_ops, set_quantization_enabled

E, H, B, L, S = 16, 4, 3, 5, 7


def _inputs(kind: str, batch_first: bool, kdim: int, g: torch.Generator) -> tuple:
    def t(n: int, d: int) -> torch.Tensor:
        return torch.randn(*((B, n) if batch_first else (n, B)), d, generator=g)

    if kind == "self":
        x = t(L, E)
        return x, x, x
    q, k = t(L, E), t(S, kdim)
    return (q, k, k) if kind == "kv" else (q, k, t(S, kdim))


def _masks(kind: str, g: torch.Generator, src: int) -> dict:
    def bool_mask(*shape):
        m = torch.rand(*shape, generator=g) > 0.6
        m[..., 0] = False  # every query attends to at least one key
        return m

    return {"none": {}, "bool": {"attn_mask": bool_mask(L, src)}, "float": {"attn_mask": torch.randn(L, src, generator=g)},
            "per-head": {"attn_mask": torch.randn(B * H, L, src, generator=g)},
            "padding": {"key_padding_mask": bool_mask(B, src)},
            "float-padding": {"key_padding_mask": torch.randn(B, src, generator=g)},
            "both": {"attn_mask": bool_mask(L, src), "key_padding_mask": bool_mask(B, src)}}[kind]


def _mha(batch_first=True, kdim=None, bias=True, add_bias_kv=False, add_zero_attn=False, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(E, H, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
                              kdim=kdim, vdim=kdim, batch_first=batch_first).eval()
    if add_bias_kv:
        nn.init.normal_(m.bias_k)
        nn.init.normal_(m.bias_v)
    return m


VARIANTS = [dict(batch_first=bf, kdim=kd) for bf, kd in itertools.product((True, False), (None, 12))] + [
    dict(bias=False), dict(add_bias_kv=True), dict(add_zero_attn=True), dict(add_bias_kv=True, add_zero_attn=True,
                                                                             batch_first=False)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
@pytest.mark.parametrize("inputs", ["self", "kv", "cross"])
def test_disabled_quantization_is_the_float_module(variant, inputs):
    m = _mha(**variant)
    q = QuantMultiheadAttention.from_module(m, OpQuantSpec())
    set_quantization_enabled(q, False)
    kdim = variant.get("kdim") or E
    g = torch.Generator().manual_seed(1)
    args = _inputs("kv" if inputs == "self" and kdim != E else inputs, variant.get("batch_first", True), kdim, g)
    src = args[1].shape[1 if variant.get("batch_first", True) else 0]
    for mask, (need, avg) in itertools.product(["none", "bool", "float", "per-head", "padding", "float-padding", "both"],
                                               [(True, True), (True, False), (False, True)]):
        kw = {**_masks(mask, g, src), "need_weights": need, "average_attn_weights": avg}
        with torch.no_grad():  # torch's own fast path where it applies
            ref, ref_w = m(*args, **kw)
            out, w = q(*args, **kw)
        assert (out - ref).abs().max().item() <= 1e-5, (mask, need, avg)
        assert (w is None) == (ref_w is None) and (w is None or (w - ref_w).abs().max().item() <= 1e-5)


def test_disabled_unbatched_causal_hint_and_train_mode():
    m = _mha(batch_first=False, dropout=0.3)
    q = QuantMultiheadAttention.from_module(m, OpQuantSpec())
    set_quantization_enabled(q, False)
    x = torch.randn(L, E, generator=torch.Generator().manual_seed(2))  # unbatched
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    for kw in ({}, {"key_padding_mask": torch.tensor([False, True, False, False, True])},
               {"attn_mask": causal, "is_causal": True, "need_weights": False}, {"attn_mask": causal, "is_causal": True}):
        ref, ref_w = m(x, x, x, **kw)
        out, w = q(x, x, x, **kw)
        assert out.shape == ref.shape and (out - ref).abs().max().item() <= 1e-5
        assert (w is None) == (ref_w is None) and (w is None or (w - ref_w).abs().max().item() <= 1e-5)
    with pytest.raises(RuntimeError, match="is_causal"):
        q(x, x, x, is_causal=True)
    q.train()  # attention dropout in train mode, none in eval
    assert not torch.equal(q(x, x, x)[0], q(x, x, x)[0])
    q.eval()
    assert torch.equal(q(x, x, x)[0], q(x, x, x)[0])


def test_structure_counts_and_state_dict():
    q = QuantMultiheadAttention.from_module(_mha(), OpQuantSpec())
    ops = quant_ops(q)
    assert {n: type(op) for n, op in ops.items()} == {"in_proj": QuantLinear, "out_proj": QuantLinear,
                                                      "matmul_scores": QuantMatMul, "matmul_context": QuantMatMul}
    assert q.matmul_scores.role == "attn_scores" and q.matmul_context.role == "attn_context"
    assert q.in_proj_weight is q.in_proj.weight and q.in_proj_weight.shape == (3 * E, E)  # torch's names still read
    assert "in_proj_weight" not in q.state_dict() and "in_proj.weight" in q.state_dict()  # each tensor once
    sep = QuantMultiheadAttention.from_module(_mha(kdim=12), OpQuantSpec())
    assert [n for n, op in quant_ops(sep).items() if isinstance(op, QuantLinear)] == ["q_proj", "k_proj", "v_proj",
                                                                                       "out_proj"]
    assert sep.in_proj_weight is None and sep.k_proj_weight.shape == (E, 12) and sep.in_proj_bias.shape == (3 * E,)


@pytest.mark.parametrize("kdim", [None, 12])
def test_census_counts_the_float_module_and_the_quantized_one_alike(kdim):
    """The float census counts nn.MultiheadAttention's in-projection(s), out_proj and both products; the
    quantized module computes exactly those, each through a quantized op."""

    class Wrap(nn.Module):
        def __init__(self, mha):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x[..., :kdim] if kdim else x, x[..., :kdim] if kdim else x)[0]

    m = _mha(kdim=kdim)
    x = torch.randn(2, L, E)
    float_census = take_census(Wrap(m), default_forward, x)
    quant_census = take_census(Wrap(QuantMultiheadAttention.from_module(m, OpQuantSpec())), default_forward, x)
    linears = 2 if kdim is None else 4
    assert float_census.counts()["linear"] == {"total": linears, "quantized": 0}
    assert float_census.counts()["attn_matmul"] == {"total": 2, "quantized": 0}
    assert quant_census.counts()["linear"] == {"total": linears, "quantized": linears}
    assert quant_census.counts()["attn_matmul"] == {"total": 2, "quantized": 2} and quant_census.float_ops() == []


def _calibrate_by_max(q: nn.Module, args: tuple, kwargs: dict) -> None:
    """Max intervals from one float forward (each op's own inputs), then quantization on."""
    seen = {}
    hooks = [op.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a)) for n, op in quant_ops(q).items()]
    set_quantization_enabled(q, False)
    with torch.no_grad():
        q(*args, **kwargs)
    for h in hooks:
        h.remove()
    for n, op in quant_ops(q).items():
        qa, qb = op.quantizers()
        qa.init_max(seen[n][0])
        qb.init_max(op.weight if op.has_weight else seen[n][1])
    set_quantization_enabled(q, True)


@pytest.mark.parametrize("inputs", ["self", "cross"])
def test_w8a8_output_sqnr(inputs):
    m = _mha()
    q = QuantMultiheadAttention.from_module(m, OpQuantSpec(w_bits=8, a_bits=8))
    args = _inputs(inputs, True, E, torch.Generator().manual_seed(3))
    _calibrate_by_max(q, args, {})
    with torch.no_grad():
        ref, out = m(*args)[0], q(*args)[0]
    assert sqnr_db(ref, out) > 25


def test_masks_are_honoured_when_quantized():
    m = _mha()
    q = QuantMultiheadAttention.from_module(m, OpQuantSpec(w_bits=8, a_bits=8))
    g = torch.Generator().manual_seed(4)
    query, kv = torch.randn(B, L, E, generator=g), torch.randn(B, S, E, generator=g)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[:, -3:] = True
    attn_mask = torch.zeros(L, S, dtype=torch.bool)
    attn_mask[:, 1] = True
    _calibrate_by_max(q, (query, kv, kv), {})
    kv2 = kv.clone()
    kv2[:, -3:] = 0.5 * kv[:, -3:]  # only padded keys change (within the calibrated range)
    with torch.no_grad():
        out, w = q(query, kv, kv, key_padding_mask=pad, attn_mask=attn_mask, average_attn_weights=False)
        out2, _ = q(query, kv2, kv2, key_padding_mask=pad, attn_mask=attn_mask)
    assert torch.equal(w[..., -3:], torch.zeros_like(w[..., -3:])) and torch.equal(w[..., 1], torch.zeros_like(w[..., 1]))
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    # the in_proj input interval is shared by the whole concatenated input: equal outputs up to its rounding
    assert sqnr_db(out, out2) > 30


class _TinyMHAModel(nn.Module):
    """Patch embedding, a self-attention block (sequence-first nn.MultiheadAttention), a SigLIP-style
    attention-pooling head (a learned probe cross-attending, batch-first) and a classifier."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, E, 4, 4)
        self.attn = nn.MultiheadAttention(E, H)
        self.probe = nn.Parameter(torch.randn(1, 1, E))
        self.pool = nn.MultiheadAttention(E, H, batch_first=True)
        self.head = nn.Linear(E, 5)
        self.vitq_data_config = DataConfig(input_size=(3, 16, 16))

    def forward(self, x):
        x = self.embed(x).flatten(2).permute(2, 0, 1)  # (tokens, batch, E)
        x = (x + self.attn(x, x, x, need_weights=False)[0]).transpose(0, 1)
        pooled = self.pool(self.probe.expand(x.shape[0], -1, -1), x, x)[0]
        return self.head(pooled[:, 0])


@pytest.fixture(scope="module")
def calibrated():
    model = _TinyMHAModel().eval()
    g = torch.Generator().manual_seed(5)
    calib, test = torch.randn(16, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PartialQuantizationWarning
        q = vitq.quantize(model, vitq.QuantConfig(method="liu2021", w_bits=8, a_bits=8, quantize_head=True,
                                                  num_candidates=8, max_iters=1), strict=True)
    with vitq.quantization_disabled(q), torch.no_grad():
        disabled = (q(test) - model(test)).abs().max().item()
    report = vitq.calibrate(q, calib, progress=False)
    vitq.freeze(q)
    return model, q, report, test, disabled


def test_tiny_model_full_coverage_and_calibration(calibrated):
    model, q, report, test, disabled = calibrated
    assert isinstance(q.attn, QuantMultiheadAttention) and isinstance(q.pool, QuantMultiheadAttention)
    cov = vitq.get_quant_info(q).coverage
    assert cov["linear"] == {"total": 5, "quantized": 5} and cov["attn_matmul"] == {"total": 4, "quantized": 4}
    assert cov["uncaptured"] == [] and cov["kept_float"] == []
    float_counts = take_census(model, default_forward, test[:2]).counts()  # the float model, quantizer-independent
    assert {k: v["total"] for k, v in float_counts.items()} == {k: cov[k]["total"] for k in float_counts}
    assert disabled <= 1e-5
    names = {o.name: o.role for o in report.ops}  # the engine found and searched every op of both modules
    for mha in ("attn", "pool"):
        assert names[f"{mha}.in_proj"] == names[f"{mha}.out_proj"] == "linear"
        assert names[f"{mha}.matmul_scores"] == "attn_scores" and names[f"{mha}.matmul_context"] == "attn_context"
    with torch.no_grad():
        assert sqnr_db(model(test), q(test)) > 20


def test_tiny_model_save_load_and_onnx(calibrated, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitq.export import load_quantized, save_quantized
    from vitq.export.onnx_export import export_onnx
    from vitq.export.ort_runtime import OrtModel

    _, q, _, test, _ = calibrated
    save_quantized(q, tmp_path / "q")
    loaded = load_quantized(tmp_path / "q", model=_TinyMHAModel(seed=7).eval())
    with torch.no_grad():
        sim = q(test)
        assert torch.equal(loaded(test), sim)
    ort = OrtModel(export_onnx(q, tmp_path / "q.onnx", example=test[:2]), threads=1)(test)
    assert sqnr_db(sim, torch.as_tensor(ort).float()) > 30


def test_transformer_encoder_layer_never_bypasses_the_quantized_ops():
    """nn.TransformerEncoderLayer's fused inference kernel (eval, no_grad) would skip every quantized op."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 2 * E, dropout=0.0, batch_first=True).eval()
    model = nn.Sequential(nn.Conv2d(3, E, 4, 4), nn.Flatten(2), _Transpose(), layer)
    model.vitq_data_config = DataConfig(input_size=(3, 16, 16))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    q = vitq.quantize(model, vitq.QuantConfig(method="liu2021", num_candidates=8, max_iters=1), strict=True)
    assert isinstance(q[3].self_attn, QuantMultiheadAttention)
    vitq.calibrate(q, x, progress=False)
    with torch.no_grad():
        fused_possible = q(x)
    with torch.enable_grad():
        unfused = q(x).detach()
    assert torch.equal(fused_possible, unfused)
    with torch.no_grad():
        assert not torch.allclose(fused_possible, model(x), atol=1e-6)  # quantized, not the float layer


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)

"""Generic capture of the attention products: Q·K^T and attn·V wherever an attention module computes them.

Any attention module (timm, Hugging Face, or a user's own) becomes quantized without per-family code:
its class is subclassed once (:func:`captured_class`), and the subclass's ``forward`` runs the float
class's own ``forward`` inside :class:`AttentionCapture`, a :class:`torch.overrides.TorchFunctionMode`
active only for that call. The mode sees every torch function the module's forward calls and routes

- ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)`` to
  its decomposition (:func:`sdpa_decomposed`): quantized Q·K^T -> scale -> causal / boolean / additive
  mask (relative-position bias arrives this way) -> float softmax -> dropout -> quantized attn·V;
- ``q @ k.transpose(-2, -1)``, ``attn @ v`` (``torch.matmul``, ``Tensor.__matmul__``, ``torch.bmm``, ...)
  of two activations to :class:`~vitq.nn.qops.QuantMatMul` modules of the host (Swin V2's cosine
  attention, XCiT's cross-covariance, CaiT's class attention, HF's eager attention all take this path);
- ``F.linear(x, self.qkv.weight, qkv_bias)`` (BEiT, EVA, Swin V2 concatenate a q/v bias outside the
  Linear) to the quantized Linear that owns the weight, plus the foreign bias in float;

and lets every other call through unchanged. Which call of the forward is which product is recorded
once, on a float forward (``_vitq_recording``, :func:`vitq.models.generic.install_capture`): a matmul is an attention product
when both operands depend on the input (they require grad while parameters do not); a product is
``attn_context`` when a softmax ran since the previous product (its first operand is an attention map),
else ``attn_scores``. The sites are plain structure rebuilt by every ``quantize``; the quantizer state
lives in the :class:`QuantMatMul` children, so it saves, moves and exports like every other op.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vitq.errors import VitqError
from vitq.nn.qattention import QuantAttentionMixin
from vitq.nn.qops import OpQuantSpec, QuantLinear, QuantMatMul

SDPA = F.scaled_dot_product_attention
#: the two-operand matrix products an attention forward may call (``a @ b`` arrives as ``Tensor.matmul``)
MATMULS = frozenset({torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
                     torch.bmm, torch.Tensor.bmm})
SOFTMAXES = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax})


def matmul_operands(func, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of a call of one of :data:`MATMULS` computing ``A @ B``."""
    if func is torch.Tensor.__rmatmul__:
        return args[1], args[0]
    return args[0], args[1]


def sdpa_decomposed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False, *, scores: Callable = torch.matmul,
                    context: Callable = torch.matmul) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` written out, with the two products as ``scores`` and ``context``.

    Shapes as SDPA's: ``q (..., Hq, L, E)``, ``k (..., Hk, S, E)``, ``v (..., Hk, S, Ev)`` -> ``(..., Hq, L, Ev)``.
    ``attn_mask`` is boolean (True = attend) or additive (e.g. a relative-position bias), broadcast to
    ``(..., L, S)``. Softmax in float32 for half inputs, as SDPA's math path.
    """
    if enable_gqa and q.size(-3) != k.size(-3):
        rep = q.size(-3) // k.size(-3)
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    attn = scores(q, k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        attn = attn.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
    attn = attn.softmax(dim=-1, dtype=torch.float32 if attn.dtype in (torch.float16, torch.bfloat16) else None)
    attn = attn.to(v.dtype)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p, training=True)
    return context(attn, v)


def _sdpa_args(args: tuple, kwargs: dict) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return {"q": bound["query"], "k": bound["key"], "v": bound["value"], "attn_mask": bound.get("attn_mask"),
            "dropout_p": bound.get("dropout_p", 0.0), "is_causal": bound.get("is_causal", False),
            "scale": bound.get("scale"), "enable_gqa": bound.get("enable_gqa", False)}


class AttentionCapture(TorchFunctionMode):
    """The functional override active inside one captured attention forward (see the module docstring).

    ``record=True`` (once, at :func:`vitq.quantize`) decides the sites and creates the host's
    :class:`QuantMatMul` children; otherwise the mode follows the recorded sites call by call.
    """

    def __init__(self, host: CapturedAttentionMixin, record: bool = False):
        super().__init__()
        self.host, self.record = host, record
        self.index = 0  # products (matmul-like calls and SDPA calls) seen so far in this forward
        self.softmax_since = False
        self.linears = {id(m.weight): m for m in host.modules() if isinstance(m, QuantLinear)}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is SDPA:
            scores, context = self._site("sdpa", None, None)
            self.softmax_since = False
            return sdpa_decomposed(**_sdpa_args(args, kwargs), scores=scores, context=context)
        if func in MATMULS and not kwargs:
            a, b = matmul_operands(func, args)
            site = self._site("matmul", a, b)
            if site is not None:
                self.softmax_since = False
                return site(a, b)
        elif func in SOFTMAXES:
            self.softmax_since = True
        elif func is F.linear:
            routed = self._linear(args, kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)

    def _linear(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """``F.linear(x, W, b)`` on the weight of a quantized Linear, with a bias that is not the Linear's own:
        the Linear itself (quantized input and weight), then the foreign bias in float."""
        names = ("input", "weight", "bias")
        bound = {**dict(zip(names, args)), **kwargs}
        lin = self.linears.get(id(bound.get("weight")))
        bias = bound.get("bias")
        if lin is None or bias is lin.bias:
            return None
        out = lin(bound["input"])
        if lin.bias is not None:
            out = out - lin.bias
        return out if bias is None else out + bias

    def _site(self, kind: str, a: torch.Tensor | None, b: torch.Tensor | None):
        host, i = self.host, self.index
        self.index += 1
        if self.record and i == len(host._vitq_sites):
            host._vitq_sites = (*host._vitq_sites, self._new_site(kind, a, b))
        sites = host._vitq_sites
        if i >= len(sites) or sites[i][0] != kind:
            raise VitqError(f"{host._vitq_name()}: call {i} of its forward is a {kind}, not what vitq recorded when "
                            f"it was quantized ({sites[i][0] if i < len(sites) else 'no further product'}); its "
                            "forward's control flow depends on the input, which vitq cannot capture")
        mods = [getattr(host, n) if n is not None else None for n in sites[i][1:]]
        if kind == "sdpa":
            return mods[0], mods[1]
        return mods[0]

    def _new_site(self, kind: str, a: torch.Tensor | None, b: torch.Tensor | None) -> tuple:
        host = self.host
        if kind == "sdpa":
            return ("sdpa", host._add_product("attn_scores"), host._add_product("attn_context"))
        if not (a.requires_grad and b.requires_grad):  # a product with a parameter-only operand: not attention
            return ("matmul", None)
        return ("matmul", host._add_product("attn_context" if self.softmax_since else "attn_scores"))

    def finish(self) -> None:
        sites = self.host._vitq_sites
        if self.index != len(sites):
            raise VitqError(f"{self.host._vitq_name()}: its forward made {self.index} matrix products, vitq recorded "
                            f"{len(sites)} when it was quantized; its control flow depends on the input, which vitq "
                            "cannot capture")


class CapturedAttentionMixin(QuantAttentionMixin):
    """Mixed into a dynamic subclass of a float attention class by :func:`captured_class`.

    Attributes:
        _vitq_sites: per product call of the forward, in order: ``("sdpa", scores, context)`` or
            ``("matmul", name | None)``, names of the host's :class:`QuantMatMul` children (``None``: not an
            attention product, computed in float).
    """

    _vitq_sites: tuple = ()
    _vitq_spec: OpQuantSpec = OpQuantSpec()
    _vitq_label: str = ""
    _vitq_recording: bool = False
    #: the float attention class this one captures
    _vitq_float_cls: type = nn.Module

    @classmethod
    def from_module(cls, module: nn.Module, spec: OpQuantSpec) -> nn.Module:
        from vitq.nn.registry import clone_as

        q = clone_as(module, cls)
        q._vitq_spec, q._vitq_sites, q._vitq_recording = spec, (), False
        return q

    def _vitq_name(self) -> str:
        return f"{self._vitq_label or 'attention'} ({self._vitq_float_cls.__name__})"

    def _add_product(self, role: str) -> str:
        base = "matmul_scores" if role == "attn_scores" else "matmul_context"
        n = sum(1 for s in self._vitq_sites for name in s[1:] if name and name.startswith(base))
        name = base if n == 0 else f"{base}_{n}"
        self.add_module(name, QuantMatMul(role, self._vitq_spec))
        return name

    def products(self) -> list[str]:
        """Names of the :class:`QuantMatMul` children, in call order."""
        return [n for s in self._vitq_sites for n in s[1:] if n is not None]

    def forward(self, *args, **kwargs):
        with AttentionCapture(self, record=self._vitq_recording) as mode:
            out = super().forward(*args, **kwargs)
        mode.finish()
        return out


_CAPTURED: dict[type[nn.Module], type[nn.Module]] = {}


def captured_class(float_cls: type[nn.Module]) -> type[nn.Module]:
    """The quantized subclass of an attention class: ``Captured<Name>(CapturedAttentionMixin, float_cls)``.

    Made once per class; its ``forward`` is the float class's, run inside :class:`AttentionCapture`.
    """
    if float_cls not in _CAPTURED:
        _CAPTURED[float_cls] = type(f"Captured{float_cls.__name__}", (CapturedAttentionMixin, float_cls),
                                    {"__module__": __name__, "_vitq_float_cls": float_cls, "__doc__": f"{float_cls.__qualname__} with its attention "
                                     "products captured by vitq (see vitq.nn.capture)."})
    return _CAPTURED[float_cls]

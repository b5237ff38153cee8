"""What a model computes, counted on one forward: Linears, convolutions and attention products, each
quantized or not. Used to find the attention modules to capture, and to say after :func:`vitq.quantize`
how much of the model is quantized (never silently partial).

The count is independent of how vitq quantizes: a :class:`~torch.overrides.TorchFunctionMode` sees every
``F.linear``, ``F.conv*d``, matrix product and ``F.scaled_dot_product_attention`` call, and a stack of
forward hooks says which module made it. A product is an *attention product* (Q·K^T, attn·V, or any other
product of two activations) when both operands depend on the input: the forward runs with grad enabled,
the input requiring grad and every parameter not (:func:`activation_forward`), so dependence is
``requires_grad``. An SDPA call is two products. A call made by a quantized op's own forward
(:class:`~vitq.nn.qops.QuantOp`) counts as quantized; any other call of the same kind is float and is named
by the innermost module that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vitq.nn.capture import MATMULS, SDPA, matmul_operands
from vitq.nn.qops import QuantMatMul, QuantOp

CONVS = {F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv3d: "conv3d", F.conv_transpose1d: "conv_transpose1d",
         F.conv_transpose2d: "conv_transpose2d", F.conv_transpose3d: "conv_transpose3d"}
LINEAR_TYPES = (nn.Linear,)
#: the leading positional parameters of ``F.multi_head_attention_forward``
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight")
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class Census:
    """One forward's count.

    Attributes:
        linears, convs: ``{name: quantized}`` per Linear / convolution used (the owning module's name; a
            functional call on a weight no Linear owns is named ``"<module>: F.linear"``).
        attn_quantized: attention products computed by a :class:`QuantMatMul` (per call).
        attn_float: ``{innermost module: products}`` computed in float.
        unused: Linear / convolution modules the forward never calls.
    """

    linears: dict[str, bool] = field(default_factory=dict)
    convs: dict[str, bool] = field(default_factory=dict)
    attn_quantized: int = 0
    attn_float: dict[str, int] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    conv_kinds: dict[str, str] = field(default_factory=dict)

    @property
    def attn_total(self) -> int:
        return self.attn_quantized + sum(self.attn_float.values())

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"linear" | "conv" | "attn_matmul": {"total": n, "quantized": q}}``."""
        return {
            "linear": {"total": len(self.linears), "quantized": sum(self.linears.values())},
            "conv": {"total": len(self.convs), "quantized": sum(self.convs.values())},
            "attn_matmul": {"total": self.attn_total, "quantized": self.attn_quantized},
        }

    def float_ops(self) -> list[str]:
        """Every op computed in float, named: ``"blocks.0.attn: 2 attention products"``, ``"head: linear"``."""
        out = [f"{n}: linear" for n, q in self.linears.items() if not q]
        out += [f"{n}: {self.conv_kinds.get(n, 'conv')}" for n, q in self.convs.items() if not q]
        out += [f"{n or '(root)'}: {k} attention product{'s' if k > 1 else ''}" for n, k in self.attn_float.items()]
        return out


class _CensusMode(TorchFunctionMode):
    def __init__(self, census: Census, stack: list, owners: dict[int, str]):
        super().__init__()
        self.census, self.stack, self.owners = census, stack, owners

    def _record(self, table: dict[str, bool], role: str, weight, func_name: str) -> str:
        name, mod = self.stack[-1] if self.stack else ("", None)
        if isinstance(mod, QuantOp) and mod.role == role:
            table[name] = True
            return name
        owner = self.owners.get(id(weight))
        key = owner if owner is not None else f"{name or '(root)'}: F.{func_name}"
        table.setdefault(key, False)
        return key

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.census
        if func is F.linear:
            self._record(c.linears, "linear", args[1] if len(args) > 1 else kwargs.get("weight"), "linear")
        elif func in CONVS:
            key = self._record(c.convs, "conv", args[1] if len(args) > 1 else kwargs.get("weight"), CONVS[func])
            c.conv_kinds.setdefault(key, CONVS[func])
        elif func is SDPA:
            name = self.stack[-1][0] if self.stack else ""
            c.attn_float[name] = c.attn_float.get(name, 0) + 2
        elif func is F.multi_head_attention_forward:  # torch's nn.MultiheadAttention: one opaque call
            name = self.stack[-1][0] if self.stack else ""
            c.attn_float[name] = c.attn_float.get(name, 0) + 2
            bound = {**dict(zip(_MHA_ARGS, args)), **kwargs}
            in_proj = [bound.get("in_proj_weight")] if not bound.get("use_separate_proj_weight") else \
                [bound.get(k) for k in ("q_proj_weight", "k_proj_weight", "v_proj_weight")]
            for i in range(len(in_proj)):
                c.linears.setdefault(f"{name or '(root)'}: in_proj{'' if len(in_proj) == 1 else i}", False)
            self._record(c.linears, "linear", bound.get("out_proj_weight"), "linear")
        elif func in MATMULS or func is torch.einsum:
            if func is torch.einsum:
                ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
            else:
                ops = list(matmul_operands(func, args))
            name, mod = self.stack[-1] if self.stack else ("", None)
            if isinstance(mod, QuantMatMul):
                c.attn_quantized += 1
            elif len(ops) == 2 and all(isinstance(t, torch.Tensor) and t.requires_grad for t in ops):
                c.attn_float[name] = c.attn_float.get(name, 0) + 1
        return func(*args, **kwargs)


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[tuple[list, set[str]]]:
    stack: list[tuple[str, nn.Module]] = []
    called: set[str] = set()
    handles = []

    def pre(name):
        def hook(mod, _args):
            stack.append((name, mod))
            called.add(name)
        return hook

    def post(_mod, _args, _out):
        stack.pop()

    try:
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post, always_call=True))
        yield stack, called
    finally:
        for h in handles:
            h.remove()


def activation_forward(model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], object],
                       images: torch.Tensor) -> Callable[[], object]:
    """A function that runs ``forward(model, images)`` so that exactly the tensors depending on ``images``
    require grad: grad enabled, ``images`` requiring grad, every parameter not (restored afterwards), and
    torch's random state restored (a model that draws random numbers, e.g. MAE's masking, is not moved)."""

    def run():
        params = [p for p in model.parameters() if p.requires_grad]
        x = images.detach().clone().requires_grad_(True)
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                return forward(model, x)
        finally:
            for p in params:
                p.requires_grad_(True)

    return run


def take_census(model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], object],
                images: torch.Tensor) -> Census:
    """Count what one forward of ``model`` on ``images`` computes (see the module docstring)."""
    census = Census()
    owners = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, (*LINEAR_TYPES, *CONV_TYPES))}
    was_training = model.training
    model.eval()
    try:
        with _module_stack(model) as (stack, called), _CensusMode(census, stack, owners):
            activation_forward(model, forward, images)()
    finally:
        model.train(was_training)
    used = set(census.linears) | set(census.convs)
    census.unused = [n for n, m in model.named_modules()
                     if isinstance(m, (*LINEAR_TYPES, *CONV_TYPES)) and n not in used and n not in called]
    return census

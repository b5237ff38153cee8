"""The fast evaluator: the same objective and candidate grid as the reference
(:mod:`~vitq.calibration.search.reference`), evaluated with far less arithmetic.

Four levers, each checked against the reference by tests and by ``benchmarks/calibration_speed.py``:

1. **Weight intervals by moments (exact, exhaustive).** With the input X fixed, the Pearson / cosine /
   MSE objective of a Linear's output O_hat = X_q W_q^T + b needs, per calibration sample i, only
   sum(O_hat), sum(O * O_hat) and sum(O_hat^2). Each is a cheap contraction with statistics of X_q
   computed once per search:
       sum_t O_hat_t         = s_i . (W_q^T 1) + T * sum(b)              s_i = sum_t X_q,t
       sum O * O_hat         = <W_q, M_i> + sum_t O_t . b                M_i = O_i^T X_q,i   (Cout x Cin)
       sum O_hat^2           = <G_i, W_q^T W_q> + 2 s_i . W_q^T b + T |b|^2      G_i = X_q,i^T X_q,i
   so all C candidates are evaluated (no approximation) for the price of a few forwards. With
   per-tensor integer codes W_q = Delta * C, W_q^T W_q = Delta^2 * C^T C is an exact int8 GEMM, and
   all candidates' codes come from one fused pass. Used when the statistics fit the memory budget
   and cost less than direct evaluations (:meth:`FastEvaluator._moment_costs`).
2. **Coarse-to-fine search over the candidate grid** for activation intervals (and weights when (1)
   does not apply): :func:`vitq.quantizers.grid.walk`, every k-th candidate (k ~ sqrt(C)), then all
   candidates within k of the best one or two local minima of those, about 3*sqrt(C) evaluations
   instead of C. ``benchmarks/calibration_speed.py`` counts the ops where it picks another interval
   than the exhaustive reference.

3. **Integer GEMMs.** At <= 8 bits a Linear's output from quantized operands is
   ``(C_X C_W^T) * Delta_X * Delta_W + b`` with integer codes C: evaluated with an int8 x int8 -> int32
   GEMM (``torch._int_mm``, VNNI on x86), exact and about 5x faster here than the float GEMM of the
   fake-quantized operands. The patch-embedding convolution (kernel == stride) is evaluated as the
   Linear it is over non-overlapping patches, so it takes paths (1) and (3) too.

4. **Attention scores by moments.** Q·K^T's objective and ranking loss from d x d Gram matrices and
   the pair differences Q (K^T D), without forming the (n, heads, T, T) scores; coarse-to-fine as (2)
   (:mod:`~vitq.calibration.search.score_moments`): about 3x less arithmetic per candidate at ViT shapes.

Candidates are evaluated into preallocated buffers (``out=``), avoiding a fresh allocation of the
quantized operand per candidate.

The evaluator needs a loss it can take moments of (:class:`~vitq.calibration.search.loss.SimilarityLoss`).
It searches uniform operands only; next to a non-uniform operand (which its own quantizer searches,
:mod:`~vitq.calibration.search.alternating`) the integer path (int8 uniform codes on both operands)
is off and the rest applies. A search repeated from the state its last run ended in (same intervals,
same bias) picks the same interval again and is skipped (exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitq.calibration.search.data import OpData
from vitq.calibration.search.loss import OutputLoss
from vitq.calibration.search.problem import OpProblem
from vitq.calibration.search.score_moments import ScoreMoments
from vitq.distributed import shard_sum
from vitq.quantizers.grid import best_index, walk
from vitq.quantizers.kernels import codes_into, fake_quant_into
from vitq.quantizers.uniform import UniformQuantizer, quantize

# Largest statistics (bytes, float64) the moment path may hold for one op.
MOMENT_BUDGET_BYTES = 768 << 20
# Measured here (2 threads, AVX-512 VNNI): an int8 GEMM costs about a quarter of the float one.
INT_GEMM_SPEEDUP = 4.0
HAS_INT_MM = hasattr(torch, "_int_mm")


def patch_conv_as_linear(op, data: OpData) -> OpData | None:
    """The data of a patch-embedding convolution (kernel == stride, no padding, dilation or groups)
    laid out as a Linear over non-overlapping patches: ``a`` (N, T, C*kh*kw), ``b`` (Cout, C*kh*kw),
    ``target`` (N, T, Cout). Per-sample objectives are unchanged (same elements, another order)."""
    if op.role != "conv" or not data.b_is_weight or getattr(data, "out_weight", None) is not None:
        return None
    kh, kw = op.kernel_size
    if (tuple(op.stride) != (kh, kw) or op.padding not in ((0, 0), "valid") or tuple(op.dilation) != (1, 1)
            or op.groups != 1):
        return None
    x = data.a
    n, c, h, w = x.shape
    ho, wo = h // kh, w // kw
    a = x[..., : ho * kh, : wo * kw].reshape(n, c, ho, kh, wo, kw).permute(0, 2, 4, 1, 3, 5).reshape(n, ho * wo, -1)
    target = data.target.permute(0, 2, 3, 1).reshape(n, ho * wo, -1)
    return OpData(a=a, b=data.b.reshape(data.b.shape[0], -1), target=target, b_is_weight=True)


class FastEvaluator:
    """Searches one uniform operand's interval of an :class:`OpProblem` with the levers of the module
    docstring; same objective and candidates as :class:`~vitq.calibration.search.reference.DirectEvaluator`."""

    #: the walk over the grid is coarse-to-fine (also what searchable quantizers are told)
    exhaustive = False

    @classmethod
    def build(cls, op, data: OpData, loss_for: Callable[[OpData], OutputLoss]) -> FastEvaluator:
        """The evaluator of ``op``, a patch-embedding convolution laid out as a Linear; ``loss_for(data)``
        builds the loss strategy for the layout chosen."""
        view = patch_conv_as_linear(op, data)
        if view is None:
            return cls(OpProblem(op, data, loss_for(data)), is_linear=op.role == "linear")
        problem = OpProblem(op, view, loss_for(view), compute=lambda a, b: F.linear(a, b, op.bias), channel_dim=-1)
        return cls(problem, is_linear=True)

    def __init__(self, problem: OpProblem, *, is_linear: bool):
        if not problem.loss.moments:
            raise ValueError(f"the fast evaluator needs a loss computed from moments; got {type(problem.loss).__name__}")
        self.problem, self.loss = problem, problem.loss
        self.op, self.data, self.qa, self.qb, self.n = problem.op, problem.data, problem.qa, problem.qb, problem.n
        self._buf: torch.Tensor | None = None
        self._last: dict[int, tuple[torch.Tensor, ...]] = {}
        self.is_linear = is_linear
        self.use_int = (
            HAS_INT_MM and self.is_linear and self.data.b_is_weight and self.data.a.device.type == "cpu"
            # integer codes of Eq. 8 only: other quantizers (two-region, log, ...) are evaluated in float
            and all(type(q) is UniformQuantizer and -128 <= q.qmin and q.qmax <= 127 for q in (self.qa, self.qb))
        )
        if self.use_int:
            self.x2 = self.data.a.reshape(-1, self.data.a.shape[-1])  # (N*T, Cin), a view
            self.tokens = self.x2.shape[0] // self.n
            self._xcodes = torch.empty(self.x2.shape, dtype=torch.int8)

    # -- shared helpers ---------------------------------------------------------------------------------
    def _fq_into(self, q, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self._buf is None or self._buf.shape != x.shape:
            self._buf = torch.empty_like(x)
        return fake_quant_into(x, q.broadcast_scale(x, scale), q.qmin, q.qmax, self._buf)

    # -- dispatch -----------------------------------------------------------------------------------------
    def search_operand(self, which: int, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
        """Best of the candidates ``base * factors[i]`` for operand ``which``; returns the loss in force."""
        # A search repeated from the state its last run ended in (same intervals, same bias) picks the
        # same interval again: skip it. Exact; it saves the last half-round of most ops.
        state = self._state()
        if self._last.get(which) is not None and all(torch.equal(u, v) for u, v in zip(state, self._last[which])):
            return current_loss
        if which == 1 and self._moments_apply(len(factors)):
            loss = self._search_weight_moments(base, current_loss, factors)
        elif self._score_moments_apply(which):
            loss = self._search_score_moments(which, base, current_loss, factors)
        elif self.use_int:
            loss = self._search_int(which, base, current_loss, factors)
        else:
            loss = self._search_grid(which, base, current_loss, factors)
        self._last[which] = self._state()
        return loss

    def _state(self) -> tuple[torch.Tensor, ...]:
        bias = self.op.bias.detach().clone() if self.problem.has_bias else torch.zeros(())
        return self.qa.scale.clone(), self.qb.scale.clone(), bias

    def current_loss(self) -> float:
        if self.use_int:  # the same arithmetic as the candidates it is compared with
            return self._int_loss(self._codes_x(self.qa.scale), self._codes_w(self.qb.scale), self.qa.scale, self.qb.scale)
        return self.problem.current_loss()

    def _accept_confirmed(self, q, base: torch.Tensor, factors: list[float], cache: dict[int, float],
                          old: torch.Tensor, current_loss: float) -> float:
        """Accept the best candidate of ``cache`` (losses computed another way than :meth:`current_loss`,
        with the current interval ``old`` at index -1) if it beats the current interval there, and if
        the direct computation confirms it; else keep ``old``. The confirmation keeps search histories
        comparable and keeps the old interval where float rounding misjudged a near tie."""
        best = best_index(cache)
        if not cache[best] < cache[-1]:
            return current_loss
        q.scale.copy_(base * factors[best])
        new_loss = self.current_loss()
        if new_loss < current_loss:
            return new_loss
        q.scale.copy_(old)
        return current_loss

    def _accept_best(self, q, base: torch.Tensor, factors: list[float], evaluate, current_loss: float) -> float:
        """Coarse-to-fine over the grid; the best candidate replaces ``q``'s interval only if it is
        strictly better than the current one (as in the reference)."""
        cache = walk(len(factors), evaluate)
        best = best_index(cache)
        if cache[best] < current_loss:
            q.scale.copy_(base * factors[best])
            return cache[best]
        return current_loss

    # -- (3) integer evaluation ---------------------------------------------------------------------------
    def _codes_x(self, scale: torch.Tensor) -> torch.Tensor:
        """Int8 codes of the input at ``scale`` (Eq. 8), into a reused buffer."""
        q = self.qa
        return codes_into(self.x2, q.broadcast_scale(self.x2, scale), q.qmin, q.qmax, self._xcodes)

    def _codes_w(self, scale: torch.Tensor) -> torch.Tensor:
        q, w = self.qb, self.data.b
        return quantize(w, q.broadcast_scale(w, scale), q.bits, q.signed).to(torch.int8)

    def _int_loss(self, xc: torch.Tensor, wc: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> float:
        """The objective of the op's output ``int32(C_X C_W^T) * Delta_X * Delta_W + b``."""
        wct, bias = wc.t(), self.op.bias
        step = sa * sb  # 0-d, or per output channel (the last output dim)

        def outputs():
            for rows in self.problem.rows():
                out = torch._int_mm(xc[rows.start * self.tokens: rows.stop * self.tokens], wct).float().mul_(step)
                if bias is not None:
                    out.add_(bias.detach())
                yield rows, out.view(rows.stop - rows.start, -1)

        return self.problem.mean_of(outputs())

    def _search_int(self, which: int, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
        """Coarse-to-fine over the grid (as :meth:`_search_grid`), each candidate by an integer GEMM."""
        if which == 0:
            q = self.qa
            wc, sb = self._codes_w(self.qb.scale), self.qb.scale

            def evaluate(indices: list[int]) -> list[float]:
                out = []
                for i in indices:
                    s = base * factors[i]
                    out.append(self._int_loss(self._codes_x(s), wc, s, sb))
                return out
        else:
            q = self.qb
            xc, sa = self._codes_x(self.qa.scale), self.qa.scale

            def evaluate(indices: list[int]) -> list[float]:
                out = []
                for i in indices:
                    s = base * factors[i]
                    out.append(self._int_loss(xc, self._codes_w(s), sa, s))
                return out

        return self._accept_best(q, base, factors, evaluate, current_loss)

    # -- (1) weights by moments ---------------------------------------------------------------------------
    def _moments_apply(self, num_candidates: int) -> bool:
        if not self.data.b_is_weight or not self.is_linear or self.loss.ranking is not None:
            return False
        cout, cin = self.data.b.shape
        # all ranks' samples: every rank of a data-parallel calibration takes the single-process path
        need = 4 * self.problem.n_total * (cout * cin + cin * cin)
        if need > MOMENT_BUDGET_BYTES:
            return False
        setup, per_candidate, direct = self._moment_costs()
        return setup + 3 * math.sqrt(num_candidates) * per_candidate <= 3 * math.sqrt(num_candidates) * direct

    def _moment_costs(self) -> tuple[float, float, float]:
        """Float-multiply-add costs of the weight search: the moment statistics (M_i, G_i), one candidate
        on moments (W_q^T W_q, an int8 GEMM for per-tensor codes, and its products with M and G), and
        one direct evaluation of the Linear."""
        cout, cin = self.data.b.shape
        tokens = self.data.a.numel() // cin // self.n * self.problem.n_total  # all ranks' (see _moments_apply)
        speed = INT_GEMM_SPEEDUP if self.use_int else 1.0
        gram_speed = speed if self.qb.scale.numel() == 1 else 1.0
        setup = tokens * cin * (cout + cin)
        per_candidate = cout * cin * cin / gram_speed + self.problem.n_total * cin * (cout + cin)
        return setup, per_candidate, tokens * cin * cout / speed

    def _moment_evaluator(self, base: torch.Tensor, factors: list[float]):
        """``evaluate(indices) -> losses`` of the weight candidates ``base * factor[i]`` (index -1: the
        current interval) from the per-sample moments of the fixed quantized input."""
        op, qa, qb = self.op, self.qa, self.qb
        n = self.n
        x = qa.fake_quant_with(self.data.a, qa.scale).reshape(n, -1, self.data.a.shape[-1])
        o = self.data.target.reshape(n, x.shape[1], -1)
        t, cout, cin = x.shape[1], o.shape[-1], x.shape[-1]
        d = float(t * cout)  # output elements per sample
        s = x.sum(dim=1).double()  # (n, Cin)
        m = torch.bmm(o.transpose(1, 2), x).reshape(n, -1)  # M_i = O_i^T X_i, (n, Cout*Cin)
        g = torch.bmm(x.transpose(1, 2), x).reshape(n, -1)  # G_i = X_i^T X_i, (n, Cin*Cin)
        o_sum = o.sum(dim=(1, 2)).double()
        o_sq = o.double().pow(2).sum(dim=(1, 2))
        bias = op.bias.detach().double() if op.bias is not None else None
        bias_f = op.bias.detach().float() if op.bias is not None else None
        ob = (o.sum(dim=1).double() @ bias) if bias is not None else torch.zeros(n, dtype=torch.float64)
        del x, o
        w = self.data.b
        old = qb.scale.clone()  # index -1
        num_candidates = len(factors)
        chunk = max(1, (64 << 20) // (4 * max(cout * cin, cin * cin)))

        # Per-tensor integer weight codes (Eq. 8, <= 8 bits): W_q = Delta * C with int8 C, so
        # W_q^T W_q = Delta^2 * C^T C is one exact int8 GEMM (6x faster here than the float32 bmm).
        int_codes = self.use_int and qb.scale.numel() == 1

        # Reused buffers (a fresh allocation of tens of MB costs more than filling it here).
        wf_buf = torch.empty((min(chunk, num_candidates + 1), cout, cin))
        if int_codes:
            c_buf = torch.empty(wf_buf.shape, dtype=torch.int8)
            gram_buf = torch.empty((wf_buf.shape[0], cin, cin), dtype=torch.int32)

        def products(scs: list[torch.Tensor]):
            """The candidates' weights (k, Cout, Cin) and W_q^T W_q (k, Cin*Cin) in float32, each up to
            a per-candidate factor returned with it (Delta and Delta^2 for integer codes, else 1)."""
            k = len(scs)
            steps = torch.stack([qb.broadcast_scale(w, sc) for sc in scs])  # (k,) or (k, Cout, 1)
            steps = steps.view(k, 1, 1) if steps.dim() == 1 else steps
            wk = w.expand(k, -1, -1)
            if int_codes:  # all candidates' codes in one fused pass, then one int8 GEMM each
                wf = codes_into(wk, steps, qb.qmin, qb.qmax, wf_buf[:k])
                c = c_buf[:k].copy_(wf)
                for j in range(k):
                    torch._int_mm(c[j].t(), c[j], out=gram_buf[j])
                step = steps.reshape(k).double()
                return wf, gram_buf[:k].reshape(k, -1).float(), step, step.pow(2)
            wf = fake_quant_into(wk, steps, qb.qmin, qb.qmax, wf_buf[:k])
            one = torch.ones(k, dtype=torch.float64)
            return wf, torch.bmm(wf.transpose(1, 2), wf).reshape(k, -1), one, one

        def evaluate(indices: list[int]) -> list[float]:
            out = []
            for start in range(0, len(indices), chunk):
                wf, gram, step, step2 = products([old if i < 0 else base * factors[i] for i in indices[start:start + chunk]])
                k = wf.shape[0]
                sum_hat = (s @ wf.sum(dim=1).double().T) * step  # (n, k)
                cross = (m @ wf.reshape(k, -1).T).double() * step + ob[:, None]
                sq_hat = (g @ gram.T).double() * step2
                if bias is not None:
                    # W_q^T b per candidate: one float32 GEMV batch, like the other moment products
                    # (a float64 einsum of the (k, Cout, Cin) stack cost 10% of a DeiT-S calibration).
                    wtb = torch.matmul(bias_f, wf).double() * step[:, None]  # (k, Cin)
                    sum_hat = sum_hat + t * bias.sum()
                    sq_hat = sq_hat + 2 * (s @ wtb.T) + t * bias.pow(2).sum()
                out += self._moment_loss(o_sum[:, None], o_sq[:, None], sum_hat, cross, sq_hat, d).tolist()
            return out

        return evaluate

    def _weight_moment_losses(self, base: torch.Tensor, factors: list[float]) -> list[float]:
        """The moment loss of every weight candidate (tests compare it with direct evaluations)."""
        return self._moment_evaluator(base, factors)(list(range(len(factors))))

    def _search_weight_moments(self, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
        qb = self.qb
        old = qb.scale.clone()
        evaluate = self._moment_evaluator(base, factors)
        # Evaluate all C candidates (exact) when that costs no more than the ~3*sqrt(C) direct
        # evaluations of the coarse-to-fine search; otherwise run coarse-to-fine on the moments.
        setup, per_candidate, direct = self._moment_costs()
        num = len(factors)
        exhaustive = setup + num * per_candidate <= 3 * math.sqrt(num) * direct
        cache = dict(zip([-1], evaluate([-1])))
        walk(num, evaluate, exhaustive=exhaustive, cache=cache)
        return self._accept_confirmed(qb, base, factors, cache, old, current_loss)

    def _moment_loss(self, o_sum, o_sq, sum_hat, cross, sq_hat, d: float) -> torch.Tensor:
        """Mean over samples of the objective from per-sample moments; one value per candidate column."""
        obj = self.loss.objective
        if obj == "mse":
            return self._sample_mean((o_sq - 2 * cross + sq_hat) / d)
        if obj == "pearson":
            cov = cross - o_sum * sum_hat / d
            var_o = o_sq - o_sum.pow(2) / d
            var_h = sq_hat - sum_hat.pow(2) / d
        else:
            cov, var_o, var_h = cross, o_sq, sq_hat
        den = (var_o.clamp_min(0) * var_h.clamp_min(0)).sqrt()
        sim = torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov))
        return -self._sample_mean(sim)

    def _sample_mean(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Mean over dim 0 (samples) over every rank's samples (``mean(dim=0)`` in one process)."""
        return shard_sum(per_sample.sum(dim=0)) / self.problem.n_total

    # -- (4) attention scores by moments ------------------------------------------------------------------
    def _score_moments_apply(self, which: int) -> bool:
        """Q·K^T with a uniform searched operand, when the moments cost less than the scores (d < T)."""
        q = self.qa if which == 0 else self.qb
        a, b = self.data.a, self.data.b
        if self.op.role != "attn_scores" or type(q) is not UniformQuantizer or a.dim() < 3 or b.dim() != a.dim():
            return False
        t, d, t2 = a.shape[-2], a.shape[-1], b.shape[-1]
        ranking = self.loss.ranking
        pairs = ranking.p.numel() if ranking is not None else 0
        direct = t * t2 * (d + pairs)
        moments = t * d * (d + pairs) + (d * t2 * pairs if which == 1 else 0)
        return moments < direct

    def _search_score_moments(self, which: int, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
        """Coarse-to-fine over the grid (as :meth:`_search_grid`), each candidate's loss from
        :class:`~vitq.calibration.search.score_moments.ScoreMoments`, confirmed as the weight moments are."""
        q, other_q, x, other = self.problem.operands(which)
        moments = ScoreMoments(which, other_q.fake_quant_with(other, other_q.scale), self.loss.stats, self.loss.ranking,
                               self.loss.gamma, n_total=self.problem.n_total)
        old = q.scale.clone()
        # the current interval, on the same footing as the candidates
        cache = {-1: moments.loss(self._fq_into(q, x, old))}
        walk(len(factors), lambda idx: [moments.loss(self._fq_into(q, x, base * factors[i])) for i in idx], cache=cache)
        return self._accept_confirmed(q, base, factors, cache, old, current_loss)

    # -- (2) coarse-to-fine over the grid -------------------------------------------------------------------
    def _search_grid(self, which: int, base: torch.Tensor, current_loss: float, factors: list[float]) -> float:
        """Coarse-to-fine over the grid with direct evaluations: about 3*sqrt(C) instead of C. Exact
        whenever the objective, sampled every k candidates, peaks next to its true optimum; the
        benchmark counts where it does not."""
        q, _, x, _ = self.problem.operands(which)
        loss_fn = self.problem.operand_loss(which)
        return self._accept_best(q, base, factors, lambda idx: [loss_fn(self._fq_into(q, x, base * factors[i])) for i in idx],
                                 current_loss)

"""Mixed precision: per-unit bit-widths within a model-size budget.

- :mod:`~vitq.mp.units`: MSA / MLP units (Liu et al. Sec. 3.3) or one unit per op.
- :mod:`~vitq.mp.size`: exact size of a plan in bits (the convention of :mod:`vitq.eval.size`).
- :mod:`~vitq.mp.nuclear`: nuclear-norm sensitivity (Eq. 16-17); :mod:`~vitq.mp.hessian`: HAWQ-v2 traces.
- :mod:`~vitq.mp.pareto`: the exact Pareto-frontier DP; :mod:`~vitq.mp.greedy`: MPTQ-ViT-style greedy MP.
- :mod:`~vitq.mp.plan`: the plan (``QuantConfig.plan``) and :class:`MPResult` JSON; :mod:`~vitq.mp.report`: plot.
"""

from vitq.mp.pareto import FrontierPoint, pareto_frontier
from vitq.mp.plan import MPResult, build_plan, load_plan
from vitq.mp.search import MP_METHODS, default_candidates, search_plan
from vitq.mp.units import MPUnit, find_units

__all__ = [
    "MP_METHODS", "FrontierPoint", "MPResult", "MPUnit", "build_plan", "default_candidates", "find_units",
    "load_plan", "pareto_frontier", "search_plan",
]

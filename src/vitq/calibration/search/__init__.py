"""The interval search of one quantized op (Liu et al. 3.2 and the recipes built on it).

Modules, each importing only the ones above it:

- :mod:`.data`: :class:`OpData` (an op's calibration data), :class:`OpCalibrationResult`,
  :func:`percentile_scale`.
- :mod:`.objectives`: Pearson / cosine / MSE from per-sample moments, the ranking loss of Eq. 10.
- :mod:`.loss`: the loss strategies (similarity + ranking, Hessian-weighted) and the Hessian's weights.
- :mod:`.problem`: :class:`~.problem.OpProblem`, an op's operands, data layout and loss, evaluated directly.
- :mod:`.reference`: the direct evaluator (every candidate, or coarse-to-fine).
- :mod:`.score_moments`: attention-score losses without forming the scores.
- :mod:`.fast`: the fast evaluator (moments, integer GEMMs, coarse-to-fine).
- :mod:`.alternating`: :func:`search_op`, the alternating W/X rounds and bias correction, which picks
  the strategies.

What to search is a recipe's :class:`vitq.recipes.SearchSpec` (objective, ranking, bias correction,
candidate range); the search reads nothing else of the recipe. The walk over a candidate grid is :func:`vitq.quantizers.grid.walk` (the quantizers' own searches use it too).
"""

from vitq.calibration.search.alternating import search_op
from vitq.calibration.search.data import OpCalibrationResult, OpData, percentile_scale

__all__ = ["OpCalibrationResult", "OpData", "percentile_scale", "search_op"]

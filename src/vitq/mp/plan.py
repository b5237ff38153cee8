"""The mixed-precision plan and search result, and their JSON files.

A plan is the ordered map ``{op name: {"w_bits": b, "a_bits": b}}`` that :class:`vitq.QuantConfig`
takes as ``plan`` (exact names; users may edit the file or add ``"re:<regex>"`` keys, the first match
wins). :func:`vitq.quantize` applies it per op, :func:`vitq.export.serialization.save_quantized` stores it
with the config, so a saved model carries its plan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vitq.errors import ConfigError
from vitq.mp.units import MPUnit

PLAN_VERSION = 1


def build_plan(op_names: Sequence[str], units: Sequence[MPUnit], unit_bits: Sequence[int],
               base_bits: int) -> dict[str, dict[str, int]]:
    """Per-op bits in model order: a unit's ops get its bit-width (weights and inputs), others ``base_bits``."""
    by_op = {n: b for u, b in zip(units, unit_bits) for n in u.ops}
    return {n: {"w_bits": by_op.get(n, base_bits), "a_bits": by_op.get(n, base_bits)} for n in op_names}


@dataclass
class MPResult:
    """What :func:`vitq.mp.search_plan` found.

    Attributes:
        plan: ``{op name: {"w_bits", "a_bits"}}`` for :class:`vitq.QuantConfig` ``plan``.
        unit_bits: ``{unit name: bits}``, in forward order.
        size_mb: the plan's model size (MB, 10^6 bytes; quantized weights at their bits, the rest 32-bit).
        budget_mb: the size budget.
        method: ``"nuclear"``, ``"hessian"`` or ``"greedy"``.
        frontier: ``[{"size_mb", "omega"}]``, the Pareto frontier (nuclear, hessian) or the greedy trajectory
            (``omega`` is then the calibration KL after each step).
        sensitivities: ``{unit: {bits: Omega}}`` (greedy: the calibration KL with the unit tried at those bits).
        seconds: wall time of the search.
        candidates, base_bits, granularity: the search settings.
        units: ``{unit name: {"kind", "ops", "weight_numel"}}``.
        extra: method details (nuclear norms, Hessian traces, greedy steps).
        budget_binding: False when the budget was at or above the largest model the candidates allow:
            every unit then has the largest candidate and no search was run (no sensitivities).
    """

    plan: dict[str, dict[str, int]]
    unit_bits: dict[str, int]
    size_mb: float
    budget_mb: float
    method: str
    frontier: list[dict] = field(default_factory=list)
    sensitivities: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0
    candidates: list[int] = field(default_factory=list)
    base_bits: int = 8
    granularity: str = "module"
    units: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    budget_binding: bool = True

    @property
    def bits_range(self) -> tuple[int, int]:
        """``(lowest, highest)`` bit-width the plan gives any op (weights or inputs; units and fixed ops)."""
        bits = [b for opts in self.plan.values() for b in (opts.get("w_bits"), opts.get("a_bits")) if b is not None]
        bits = bits or list(self.unit_bits.values()) or [self.base_bits]
        return min(bits), max(bits)

    def summary(self) -> dict:
        """The figures a run summary reports: method, budget and size (MB), whether the budget was binding, the
        bits actually used (``bits_min``, ``bits_max``, ``average_bits`` over the units) and ``unit_bits``."""
        lo, hi = self.bits_range
        return {"mixed_precision": True, "mp_method": self.method, "budget_mb": round(self.budget_mb, 6),
                "size_mb": self.size_mb, "budget_binding": self.budget_binding, "bits_min": lo, "bits_max": hi,
                "average_bits": round(self.average_bits, 3), "search_seconds": round(self.seconds, 2),
                "unit_bits": dict(self.unit_bits)}

    @property
    def average_bits(self) -> float:
        """Weight-count-weighted mean bit-width of the searched units."""
        numel = {n: u["weight_numel"] for n, u in self.units.items()}
        total = sum(numel.values())
        return sum(numel[n] * b for n, b in self.unit_bits.items()) / total if total else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sensitivities"] = {u: {str(b): v for b, v in s.items()} for u, s in self.sensitivities.items()}
        return {"version": PLAN_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> MPResult:
        d = dict(d)
        version = d.pop("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ConfigError(f"plan file version {version} is not supported (this vitq reads {PLAN_VERSION})")
        d["sensitivities"] = {u: {int(b): v for b, v in s.items()} for u, s in d.get("sensitivities", {}).items()}
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON; :func:`load_plan` reads its ``plan`` back."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> MPResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def load_plan(path: str | Path) -> dict[str, dict[str, int]]:
    """The plan of a JSON file: a saved :class:`MPResult`, or a bare ``{op or "re:regex": {"w_bits", "a_bits"}}``.

    The plan is validated as :class:`vitq.QuantConfig` validates it (bits in 2..16, regexes compile).
    """
    from vitq.config import QuantConfig

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"plan file {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"plan file {path} is not valid JSON: {e}") from e
    plan = doc.get("plan", doc) if isinstance(doc, dict) else None
    if not isinstance(plan, dict):
        raise ConfigError(f"plan file {path}: expected a JSON object {{op name: {{\"w_bits\": b, \"a_bits\": b}}}}")
    QuantConfig(plan=plan)
    return plan

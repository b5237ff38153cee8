"""The search package imports in one direction, and the quantizers never import the calibration."""

import ast
from pathlib import Path

import vitq

SRC = Path(vitq.__file__).parent
#: each module may import only the modules before it
ORDER = ["data", "objectives", "loss", "problem", "reference", "score_moments", "fast", "alternating"]


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_search_modules_import_in_one_direction():
    pkg = SRC / "calibration" / "search"
    assert sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    for i, name in enumerate(ORDER):
        imported = {m.rsplit(".", 1)[-1] for m in _imports(pkg / f"{name}.py") if m.startswith("vitq.calibration.search")}
        assert imported <= set(ORDER[:i]), (name, imported - set(ORDER[:i]))
        # of a recipe the search reads only its SearchSpec (plain data)
        assert all(m == "vitq.recipes.base" for m in _imports(pkg / f"{name}.py") if m.startswith("vitq.recipes")), name


def test_quantizers_and_nn_never_import_the_calibration():
    for sub in ("quantizers", "nn"):
        for path in (SRC / sub).rglob("*.py"):
            assert not any(m.startswith("vitq.calibration") for m in _imports(path)), path

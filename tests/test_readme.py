"""The README's promises: every Python example runs as written (in order, one interpreter, like a
notebook), and its method table is the recipe registry's."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 4


def test_every_python_example_runs(tmp_path):
    script = "\n\n".join(f"# --- README block {i}\n{b}" for i, b in enumerate(python_blocks()))
    (tmp_path / "readme_examples.py").write_text("import torch\ntorch.set_num_threads(1)\n" + script)
    r = subprocess.run([sys.executable, "readme_examples.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "VITQ_COMPILE": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "fmnist_w6a6" / "vitq.json").is_file()
    assert (tmp_path / "out" / "plan.png").is_file() and (tmp_path / "out" / "model.onnx").is_file()


def test_method_table_is_the_registry():
    from vitq.recipes import recipes_table

    text = README.read_text()
    table = text.split("<!-- recipes-table:start -->\n", 1)[1].split("\n<!-- recipes-table:end -->", 1)[0]
    assert table == recipes_table(), "README method table is stale: paste vitq.recipes.recipes_table()"


def test_zoo_table_is_the_zoo_results():
    import json

    from vitq.bench.zoo import zoo_table

    rows = json.loads((README.parent / "benchmarks" / "results" / "zoo.json").read_text())["rows"]
    text = README.read_text()
    table = text.split("<!-- zoo-table:start -->\n", 1)[1].split("\n<!-- zoo-table:end -->", 1)[0]
    assert table == zoo_table(rows), "README zoo table is stale: paste python benchmarks/zoo.py --table"

"""The ``vitq`` parser and entry points (console script ``vitq.cli:run``, ``python -m vitq``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitq.cli import build_parser, main, run

SRC = Path(__file__).resolve().parents[2] / "src"


def test_every_command_has_its_module():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == ["quantize", "eval", "export", "bench", "mp-search", "report"]


def test_quantize_without_flags_is_the_embedded_default(monkeypatch):
    import vitq.cli.quantize as quantize

    seen = []
    monkeypatch.setattr(quantize, "cmd_quantize", lambda args: seen.append(args) or 0)
    assert main(["quantize"]) == 0  # what `make demo` runs
    assert seen[0].command == "quantize" and seen[0].num_calib == 32 and seen[0].model == "vitq:fmnist-vit"


def test_no_command_prints_help_and_runs_nothing(monkeypatch, capsys):
    import vitq.cli.quantize as quantize

    monkeypatch.setattr(quantize, "cmd_quantize", lambda args: pytest.fail("vitq alone must not quantize"))
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("usage: vitq")


def test_vitq_error_exits_2(capsys, tmp_path, monkeypatch):
    (tmp_path / "runs" / "fmnist-vit-liu2021-w8a8").mkdir(parents=True)  # the default output, already there
    (tmp_path / "runs" / "fmnist-vit-liu2021-w8a8" / "vitq.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert main(["quantize", "--model-arg", "oops"]) == 2  # the malformed argument is named first
    assert capsys.readouterr().err == "vitq: error: --model-arg 'oops': expected KEY=VALUE\n"


@pytest.mark.parametrize("module", ["vitq", "vitq.cli"])
def test_python_dash_m(module):
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "{quantize,eval,export,bench,mp-search,report}" in res.stdout


def test_run_exits_with_mains_status(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vitq", "quantize", "--model-arg", "oops"])
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2


def test_a_rank_under_a_launcher_exits_without_finalization_and_keeps_its_output(tmp_path):
    """``WORLD_SIZE`` > 1: the rank ends through ``os._exit`` (no atexit handlers run), its status and its
    buffered output intact. (No process group here: the parser fails first, as on a bad flag under torchrun.)"""
    script = ("import atexit, sys; atexit.register(lambda: print('FINALIZED', flush=True)); "
              "sys.argv = ['vitq', 'quantize', '--no-such-flag']; print('before', end=''); "
              "from vitq.cli import run; run()")
    env = {**os.environ, "PYTHONPATH": str(SRC), "WORLD_SIZE": "2", "RANK": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert res.stdout == "before" and "FINALIZED" not in res.stdout
    assert "unrecognized arguments: --no-such-flag" in res.stderr
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**env, "WORLD_SIZE": "1"})
    assert res.returncode == 2 and res.stdout == "beforeFINALIZED\n"

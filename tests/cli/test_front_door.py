"""What a new user meets first: ``vitq`` alone, ``--help`` (complete, fast: no torch), and a clean log of
one run (no CUDA warning on a CPU machine, each message once, an unambiguous report)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS

from vitq.cli import build_parser

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "VITQ_COMPILE": "0"}
HEAVY = ("torch", "timm", "transformers")


def _parsers():
    """``(name, parser)`` of the top-level parser and every sub-command's."""
    ap = build_parser()
    yield "vitq", ap
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_vitq_alone_prints_help_and_exits_0():
    res = subprocess.run([sys.executable, "-m", "vitq"], capture_output=True, text=True, env=ENV, timeout=60)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith("usage: vitq") and "exit status:" in res.stdout


def test_every_command_has_a_description_and_examples():
    for name, p in _parsers():
        assert p.description, name
        assert p.epilog and "examples:" in p.epilog and "vitq " in p.epilog.split("examples:")[1], name


def test_every_flag_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in _parsers() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_help_documents_the_exit_statuses():
    from vitq.cli import app

    text = build_parser().format_help()
    for code, words in (("0", "success"), ("1", "unexpected"), ("2", "bad input"), ("130", "interrupted")):
        assert any(line.split()[:1] == [code] and words in line for line in text.splitlines()), code
        assert f"- {code}:" in app.__doc__


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys\nfrom vitq.cli import build_parser\nbuild_parser().format_help()\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60, check=True)
    assert res.stdout.strip() == "[]"


def test_vitq_help_imports_no_heavy_library():
    """``python -X importtime -m vitq --help``: what the console script pays for before printing help."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "vitq", "--help"], capture_output=True, text=True,
                         env=ENV, timeout=60)
    assert res.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "vitq" in imported and not imported & set(HEAVY)


def test_cli_copies_of_library_constants_agree():
    """Constants the parser holds itself so that building it imports no torch."""
    from vitq.cli import argtypes, mp_search
    from vitq.export.onnx_export import OPSETS
    from vitq.mp.search import MP_METHODS
    from vitq.quantizers.uniform import MAX_BITS, MIN_BITS

    assert mp_search.MP_METHODS == MP_METHODS
    assert (argtypes.MIN_BITS, argtypes.MAX_BITS) == (MIN_BITS, MAX_BITS)
    opset = next(a for a in dict(_parsers())["export"]._actions if a.dest == "opset")
    assert opset.type(str(OPSETS.start)) == OPSETS.start and opset.type(str(OPSETS.stop - 1)) == OPSETS.stop - 1
    for bad in (OPSETS.start - 1, OPSETS.stop):
        with pytest.raises(argparse.ArgumentTypeError):
            opset.type(str(bad))


def test_import_vitq_is_lazy_and_complete():
    code = ("import sys, vitq\nassert 'torch' not in sys.modules\n"
            "assert all(getattr(vitq, n) is not None for n in vitq.__all__)\nprint(sorted(dir(vitq)) == sorted(set(dir(vitq))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    import vitq

    with pytest.raises(AttributeError):
        vitq.no_such_name  # noqa: B018


# -- the log of one run --------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about a machine without a CUDA runtime")
def test_no_cuda_runtime_warning_on_a_cpu_machine(tmp_path):
    """torch logs it when ``torch.compile`` imports ``torch.utils.cpp_extension`` with a CUDA_HOME (or an
    nvcc on PATH) and no GPU; vitq's kernels silence that one message and nothing else."""
    env = {**ENV, "CUDA_HOME": str(tmp_path)}
    plain = subprocess.run([sys.executable, "-c", "import torch.utils.cpp_extension"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert "No CUDA runtime is found" in plain.stderr  # the condition is met here
    code = ("import logging, vitq.quantizers.kernels, torch.utils.cpp_extension\n"
            "logging.getLogger('torch.utils.cpp_extension').warning('another warning')")
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert ours.returncode == 0, ours.stderr
    assert "No CUDA runtime is found" not in ours.stderr and "another warning" in ours.stderr


def test_no_cuda_filter_keeps_other_records():
    import vitq.quantizers.kernels  # noqa: F401

    logger = logging.getLogger("torch.utils.cpp_extension")
    make = lambda msg: logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, ("/usr/local",), None)  # noqa: E731
    assert not logger.filter(make("No CUDA runtime is found, using CUDA_HOME='%s'"))
    assert logger.filter(make("Error building extension %s"))


def test_one_run_logs_each_step_once(folders):
    tmp_path = folders  # checkpoint, calib/ and test/ made by the shared fixture
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "vitq", "quantize", *TINY_VIT_CLI_ARGS, "--checkpoint",
                          str(tmp_path / "w.safetensors"), "--calib", str(tmp_path / "calib"), "--eval-data",
                          str(tmp_path / "test"), "--num-calib", "4", "--method", "minmax", "--out", str(out)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    both = res.stdout + res.stderr
    assert both.count("saved quantized model") == 1
    assert both.count("adapter swapped") == 1  # the report's internal float reference is not logged
    assert "No CUDA runtime" not in both
    md = (out / "report.md").read_text()
    assert "| top-1 change vs float (points, negative = worse) |" in md and "top-1 drop" not in md

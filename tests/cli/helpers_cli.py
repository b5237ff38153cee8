"""Running ``vitq`` in a subprocess and reading its one-line errors (shared by the CLI tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vitq.cli.app import EXIT_BAD_INPUT

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "VITQ_COMPILE": "0"}


def vitq(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitq", *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


def run_main_raising(exc: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``vitq eval`` in a subprocess whose command raises ``exc`` (a Python expression): the whole path from
    the command to the process exit, for failures that no real input provokes on demand."""
    code = ("import sys, vitq.cli.eval as e\n"
            "def boom(args):\n"
            f"    raise {exc}\n"
            "e.cmd_eval = boom\n"
            "from vitq.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=120)


def only_line(res: subprocess.CompletedProcess) -> str:
    """The single line on stderr (the test fails if there is more, e.g. a traceback or log lines)."""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def usage_error(res: subprocess.CompletedProcess) -> str:
    """The error line of an argparse usage error (after the usage lines), checking there is no traceback."""
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.startswith("usage: vitq"), res.stderr
    return res.stderr.strip().splitlines()[-1]



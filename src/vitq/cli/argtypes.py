"""``type=`` validators for the ``vitq`` flags: a bad value is an argparse usage error (exit 2, one line
naming the flag as typed) before any work starts.

Nothing here imports torch: building the parser (``vitq --help``) stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: the bit-widths a quantizer accepts (:data:`vitq.quantizers.uniform.MIN_BITS` .. ``MAX_BITS``; a test
#: checks they agree)
MIN_BITS, MAX_BITS = 2, 16


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (image counts, threads, candidates, rounds, batch sizes)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (>= 1)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (sizes in MB)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (learning rates, where 0 turns the learning off)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number >= 0")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (SmoothQuant's alpha)."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be a number in [0, 1]")
    return value


def bits(text: str) -> int:
    """A bit-width, an integer in 2..16."""
    value = _int(text)
    if not MIN_BITS <= value <= MAX_BITS:
        raise argparse.ArgumentTypeError(f"{value} bits is out of range: use an integer in {MIN_BITS}..{MAX_BITS}")
    return value


def int_in(lo: int, hi: int):
    """An integer in ``lo..hi``."""
    def parse(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use an integer in {lo}..{hi}")
        return value

    parse.__name__ = f"int in {lo}..{hi}"
    return parse


def existing_file(text: str) -> str:
    """The path of an existing file (``--config``, ``--plan``, ``--checkpoint``), returned as typed."""
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text

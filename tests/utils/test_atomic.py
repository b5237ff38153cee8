"""Atomic writes: stale temporaries of killed writes are removed (only provably dead ones, only of that
name), and results get the permissions of a plain mkdir / open under the umask."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitq.utils import atomic
from vitq.utils.atomic import (
    LEGACY_STALE_SECONDS,
    atomic_dir,
    atomic_write_text,
    remove_stale_temps,
    temp_name,
)

SRC = Path(atomic.__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _owned(path: Path, pid: int, host: str | None = None, kind: str = "tmp") -> Path:
    name = temp_name(path, kind).name
    _, h, _, rand = name.rsplit("-", 3)
    return path.parent / f".{path.name}.{kind}-{host or h}-{pid}-{rand}"


def test_temporary_left_by_kill_9_is_removed_at_the_next_write(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time\n"
            f"sys.path.insert(0, {str(SRC)!r})\n"
            "from vitq.utils.atomic import atomic_dir\n"
            f"with atomic_dir({str(out)!r}) as tmp:\n"
            "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        live = [e for e in tmp_path.iterdir() if e.name.startswith(".out.tmp-")]
        assert len(live) == 1 and f"-{p.pid}-" in live[0].name
        assert remove_stale_temps(out) == [] and live[0].exists()  # a live writer's directory is kept
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert live[0].exists() and not out.exists()  # what kill -9 leaves
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("new")
    assert sorted(e.name for e in tmp_path.iterdir()) == ["out"]
    assert (out / "f").read_text() == "new"


def test_only_dead_temporaries_of_that_name_on_this_host_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # (with no result in place, a dead writer's moved-aside old one is restored instead)
    dead = _dead_pid()
    stale_dir = _owned(out, dead)
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    stale_old = _owned(out, dead, kind="old")
    stale_old.mkdir()
    stale_file = _owned(out, dead)
    stale_file = stale_file.with_name(stale_file.name + "0")  # a second one, a file (atomic_write_text)
    stale_file.write_text("half")
    keep = [
        _owned(out, os.getpid()),                     # this process (another thread may be writing)
        _owned(out, os.getppid()),                    # a live process
        _owned(out, dead, host="0badc0de"),           # another host on a shared file system
        _owned(tmp_path / "other", dead),             # another output's temporary
        tmp_path / ".out.tmp-keep-me",                # not a name vitq makes
        tmp_path / ".out.tmpfile",
    ]
    for k in keep:
        k.mkdir()
    removed = remove_stale_temps(out)
    assert sorted(removed) == sorted([stale_dir, stale_old, stale_file])
    assert all(k.exists() for k in keep) and not any(p.exists() for p in removed)


def test_legacy_temporaries_are_removed_only_when_old(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fresh, old, old_swap = tmp_path / ".out.tmp-ab12_x9z", tmp_path / ".out.tmp-zz99_a1b", tmp_path / ".out.old-4242"
    for p in (fresh, old, old_swap):
        p.mkdir()
    past = time.time() - LEGACY_STALE_SECONDS - 60
    os.utime(old, (past, past))
    os.utime(old_swap, (past, past))
    assert sorted(remove_stale_temps(out)) == sorted([old, old_swap])
    assert fresh.exists()


def test_atomic_write_text_removes_stale_temporaries(tmp_path):
    out = tmp_path / "results.json"
    stale = _owned(out, _dead_pid())
    stale.write_text("{")
    atomic_write_text(out, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640),
                                                     (0o077, 0o700, 0o600)])
def test_atomic_dir_respects_the_umask(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "f.txt").write_text("x")
    assert _mode(out) == dir_mode and _mode(out / "f.txt") == file_mode


def test_atomic_write_text_respects_the_umask_and_keeps_an_existing_mode(tmp_path, umask):
    umask(0o022)
    new = tmp_path / "new.txt"
    atomic_write_text(new, "x")
    assert _mode(new) == 0o644 and new.read_text() == "x"
    private = tmp_path / "private.txt"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert _mode(private) == 0o600 and private.read_text() == "new"


def test_saved_model_permissions_follow_the_umask(tmp_path, umask):
    import torch
    from conftest import make_tiny_vit

    import vitq
    from vitq.export import save_packed, save_quantized

    umask(0o022)
    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(method="minmax"))
    vitq.calibrate(q, torch.randn(2, 3, 32, 32), progress=False)
    for save, name in ((save_quantized, "plain"), (save_packed, "packed")):
        out = tmp_path / "runs" / name
        save(q, out)
        assert _mode(tmp_path / "runs") == 0o755 and _mode(out) == 0o755
        assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}


def test_replacing_swaps_whole_and_leaves_nothing_beside(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert (out / "a").read_text() == "1"
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in out.iterdir()] == ["b"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_before_replace_can_veto_the_swap(tmp_path):
    out = tmp_path / "out"

    def veto():
        raise FileExistsError("taken")

    with pytest.raises(FileExistsError):
        with atomic_dir(out, before_replace=veto) as tmp:
            (tmp / "a").write_text("1")
    assert list(tmp_path.iterdir()) == []


def test_old_result_of_a_writer_killed_mid_swap_is_restored(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    old = _owned(out, dead, kind="old")  # the previous output, moved aside; the new one never moved in
    old.mkdir()
    (old / "vitq.json").write_text("previous")
    new = _owned(out, dead)
    new.mkdir()
    assert remove_stale_temps(out) == [new]
    assert (out / "vitq.json").read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

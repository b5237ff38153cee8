"""Outputs never destroy input: a save refuses a file or a foreign directory at its path, replaces an
earlier vitq output only with overwrite=True (atomically), and check_output_path validates before any work."""

from __future__ import annotations

import json
import os

import pytest
import torch

import vitq
from vitq.errors import OutputExistsError, OutputPathError, VitqError
from vitq.export import check_output_path, is_vitq_output, load_saved, save_packed, save_quantized


@pytest.fixture(scope="module")
def qmodel():
    from conftest import make_tiny_vit

    q = vitq.quantize(make_tiny_vit(), vitq.QuantConfig(method="minmax"))
    vitq.calibrate(q, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), progress=False)
    return vitq.freeze(q)


SAVERS = [pytest.param(save_quantized, id="plain"), pytest.param(save_packed, id="packed")]


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("save", SAVERS)
def test_non_vitq_directory_is_refused_and_untouched(tmp_path, qmodel, save):
    out = tmp_path / "photos"
    (out / "sub").mkdir(parents=True)
    (out / "a.jpg").write_bytes(b"precious")
    (out / "sub" / "b.txt").write_text("also precious")
    before = _snapshot(out)
    with pytest.raises(OutputExistsError, match="not a vitq output") as e:
        save(qmodel, out, overwrite=True)  # not even overwrite=True replaces a foreign directory
    assert isinstance(e.value, VitqError)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary left beside it


@pytest.mark.parametrize("save", SAVERS)
def test_a_directory_with_a_foreign_vitq_json_is_refused(tmp_path, qmodel, save):
    out = tmp_path / "other"
    out.mkdir()
    (out / "vitq.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(OutputExistsError, match="not a vitq output"):
        save(qmodel, out, overwrite=True)
    assert json.loads((out / "vitq.json").read_text()) == {"format": "something-else"}


@pytest.mark.parametrize("save", SAVERS)
def test_existing_file_is_refused(tmp_path, qmodel, save):
    out = tmp_path / "model.bin"
    out.write_bytes(b"data")
    with pytest.raises(OutputExistsError, match="not a directory"):
        save(qmodel, out, overwrite=True)
    assert out.read_bytes() == b"data"


@pytest.mark.parametrize("save", SAVERS)
def test_empty_directory_may_be_used(tmp_path, qmodel, save):
    out = tmp_path / "empty"
    out.mkdir()
    save(qmodel, out)
    assert is_vitq_output(out)
    load_saved(out)


@pytest.mark.parametrize("save", SAVERS)
def test_vitq_output_is_replaced_only_with_overwrite(tmp_path, qmodel, save):
    out = tmp_path / "run"
    save(qmodel, out, extra={"n": 1})
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        save(qmodel, out, extra={"n": 2})
    assert json.loads((out / "vitq.json").read_text())["extra"] == {"n": 1}
    save(qmodel, out, extra={"n": 2}, overwrite=True)
    assert json.loads((out / "vitq.json").read_text())["extra"] == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    load_saved(out)


def test_plain_and_packed_outputs_replace_each_other(tmp_path, qmodel):
    out = tmp_path / "run"
    save_quantized(qmodel, out)
    save_packed(qmodel, out, overwrite=True)
    assert not (out / "model.safetensors").exists() and (out / "packed.safetensors").is_file()
    save_quantized(qmodel, out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "packed.safetensors").exists()


def test_failed_overwrite_keeps_the_old_output(tmp_path, qmodel, monkeypatch):
    import vitq.export.serialization as ser

    out = tmp_path / "run"
    save_quantized(qmodel, out, extra={"n": 1})
    before = _snapshot(out)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ser, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        save_quantized(qmodel, out, extra={"n": 2}, overwrite=True)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_path_is_checked_again_before_the_swap(tmp_path, qmodel, monkeypatch):
    """Someone puts a file into the (empty) output directory while the model is being written: refused."""
    import vitq.export.serialization as ser

    out = tmp_path / "run"
    out.mkdir()
    real = ser.save_model

    def save_and_intrude(model, filename):
        real(model, filename)
        (out / "notes.txt").write_text("mine")

    monkeypatch.setattr(ser, "save_model", save_and_intrude)
    with pytest.raises(OutputExistsError):
        save_quantized(qmodel, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_check_output_path_creates_nothing(tmp_path, qmodel):
    target = tmp_path / "a" / "b" / "out"
    check_output_path(target)  # missing parents are fine: the save creates them
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output_path(empty)
    save_quantized(qmodel, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="overwrite"):
        check_output_path(tmp_path / "run")
    check_output_path(tmp_path / "run", overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError):
        check_output_path(tmp_path / "f", overwrite=True)
    with pytest.raises(OutputPathError, match="is not a directory"):
        check_output_path(tmp_path / "f" / "out")
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError):
        check_output_path(dangling, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "f", "link", "run"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_check_output_path_refuses_an_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="permission denied"):
            check_output_path(ro / "out")
        with pytest.raises(OutputPathError, match="permission denied"):
            check_output_path(ro / "new" / "out")
    finally:
        ro.chmod(0o755)


def test_check_output_path_asks_for_write_access_to_the_nearest_existing_parent(tmp_path, monkeypatch):
    import vitq.export.serialization as ser

    asked = []

    def no_access(p, mode):
        asked.append((str(p), mode))
        return False

    monkeypatch.setattr(ser.os, "access", no_access)
    with pytest.raises(OutputPathError, match="permission denied"):
        check_output_path(tmp_path / "new" / "out")
    assert asked == [(str(tmp_path), os.W_OK | os.X_OK)]

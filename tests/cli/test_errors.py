"""How ``vitq`` fails: one line on stderr and a documented exit status (``vitq.cli.app``), bad flag values
caught before any work starts, named as the user typed them.

Most tests run ``python -m vitq`` in a subprocess, as a user does; the tiny model of ``TINY_VIT_CLI_ARGS``
and tiny image folders keep each to seconds (flag errors caught by argparse cost no torch import at all).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_VIT_CLI_ARGS
from helpers_cli import ENV, SRC, only_line, run_main_raising, usage_error, vitq  # noqa: F401

from vitq.cli import main
from vitq.cli.app import EXIT_INTERRUPTED, EXIT_UNEXPECTED, error_message

# -- 1. one top-level handler -------------------------------------------------------------------------------

LINE = "vitq: error: give RUN_DIR (a vitq quantize output) and/or --bench RESULTS_JSON"


def test_vitq_error_is_one_line_exit_2():
    res = vitq("report")
    assert res.returncode == 2
    assert only_line(res) == LINE


def test_verbose_shows_the_traceback_then_the_same_line():
    for flag in ("-v", "--verbose"):
        res = vitq(flag, "report")
        assert res.returncode == 2
        assert res.stderr.startswith("Traceback (most recent call last)") and "vitq.errors.VitqError" in res.stderr
        assert res.stderr.strip().splitlines()[-1] == LINE


def test_os_error_exits_2_naming_the_path(tmp_path):
    results = tmp_path / "toy.json"
    results.write_text(json.dumps({"rows": [{"model": "toy", "method": "minmax", "w_bits": 8, "top1": 0.8}]}))
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("")
    res = vitq("report", "--bench", str(results), "--out", str(not_a_dir))  # mkdir over a file: FileExistsError
    assert res.returncode == 2
    assert only_line(res) == f"vitq: error: {not_a_dir}: File exists"


def test_unexpected_error_exits_1_and_points_to_verbose(tmp_path):
    res = run_main_raising("RuntimeError('kaboom\\nsecond line')", "eval")
    assert res.returncode == EXIT_UNEXPECTED
    assert only_line(res) == "vitq: error: unexpected RuntimeError: kaboom (run with -v for the traceback)"
    res = run_main_raising("RuntimeError('kaboom')", "-v", "eval")
    assert res.returncode == EXIT_UNEXPECTED and "Traceback" in res.stderr and "in boom" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "vitq: error: unexpected RuntimeError: kaboom (the traceback is above)"


def test_keyboard_interrupt_exits_130_in_one_line():
    res = run_main_raising("KeyboardInterrupt()", "eval")
    assert res.returncode == EXIT_INTERRUPTED
    assert only_line(res) == "vitq: interrupted"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_during_calibration_exits_130_without_traceback(folders):
    """A real Ctrl-C (SIGINT) while the tiny model calibrates with a long search."""
    args = ["quantize", *TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "w.safetensors"), "--calib",
            str(folders / "calib"), "--num-calib", "6", "--num-candidates", "2000", "--max-iters", "200",
            # the fast search can end within the second below on this model (a CI run saw the signal arrive
            # after "done", exit -2): reconstruction keeps it calibrating for minutes, so the signal lands there
            "--recon-iters", "1000000", "--no-report", "--out", str(folders / "out")]
    # a shell's background job starts with SIGINT ignored, and Python then installs no handler: restore it
    proc = subprocess.Popen([sys.executable, "-m", "vitq", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stderr:  # the log line that says calibration is about to start
            seen.append(line)
            if "quantized ops" in line or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(seen) + rest
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "vitq: interrupted"
    assert not (folders / "out").exists()


def _safetensors_error():
    from safetensors.torch import load

    try:
        load(b"not a safetensors file")
    except Exception as e:
        return e
    raise AssertionError("safetensors read garbage")


@pytest.mark.parametrize("exc,code,line", [
    (PermissionError(13, "Permission denied", "/srv/runs/x"), 2, "/srv/runs/x: Permission denied"),
    (OSError(28, "No space left on device", "/data/out/model.safetensors"), 2,
     "/data/out/model.safetensors: No space left on device"),
    (FileNotFoundError(2, "No such file or directory", "a.txt", None), 2, "a.txt: No such file or directory"),
    (OSError(18, "Invalid cross-device link", "/a", None, "/b"), 2, "/a -> /b: Invalid cross-device link"),
    (json.JSONDecodeError("Expecting value", "{\n", 2), 2, "not valid JSON: Expecting value: line 2 column 1 (char 2)"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2,
     "a file is not UTF-8 text (invalid start byte at byte 0)"),
    (ValueError("deep inside"), 1, "unexpected ValueError: deep inside (run with -v for the traceback)"),
])
def test_error_message_and_status_per_kind(exc, code, line, monkeypatch, capsys):
    import vitq.cli.eval as evaluate

    def boom(args):
        raise exc

    monkeypatch.setattr(evaluate, "cmd_eval", boom)
    assert error_message(exc) == (line, code)
    assert main(["eval"]) == code
    assert capsys.readouterr().err == f"vitq: error: {line}\n"


def test_safetensors_error_exits_2(monkeypatch, capsys):
    import vitq.cli.eval as evaluate

    e = _safetensors_error()
    monkeypatch.setattr(evaluate, "cmd_eval", lambda args: (_ for _ in ()).throw(e))
    assert main(["eval"]) == 2
    assert capsys.readouterr().err.startswith("vitq: error: corrupt or unreadable safetensors file: ")


def test_corrupt_saved_model_names_the_directory(folders):
    run = folders / "run"
    assert main(["quantize", *TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "w.safetensors"), "--calib",
                 str(folders / "calib"), "--num-calib", "2", "--method", "minmax", "--no-report", "--out", str(run)]) == 0
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # truncated: the header promises more
    res = vitq("eval", "--quantized", str(run), "--data", str(folders / "test"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]  # after the log of rebuilding the architecture
    # the recorded size and sha256 catch it before safetensors reads the file
    assert line.startswith(f"vitq: error: {run / 'model.safetensors'}: 64 bytes, but vitq.json records ")


# -- 2. flag values checked before any work ----------------------------------------------------------------

@pytest.mark.parametrize("args,line", [
    (["quantize", "--num-test", "0"], "vitq quantize: error: argument --num-test: 0 must be a positive integer (>= 1)"),
    (["quantize", "--num-test", "-5"], "vitq quantize: error: argument --num-test: -5 must be a positive integer (>= 1)"),
    (["eval", "--num-test", "0"], "vitq eval: error: argument --num-test: 0 must be a positive integer (>= 1)"),
    (["quantize", "--num-calib", "0"], "vitq quantize: error: argument --num-calib: 0 must be a positive integer (>= 1)"),
    (["--threads", "0", "quantize"], "vitq: error: argument --threads: 0 must be a positive integer (>= 1)"),
    (["--threads", "-1", "quantize"], "vitq: error: argument --threads: -1 must be a positive integer (>= 1)"),
    (["--threads", "two", "quantize"], "vitq: error: argument --threads: 'two' is not an integer"),
    (["quantize", "--budget-mb", "-1"], "vitq quantize: error: argument --budget-mb: -1 must be a positive number"),
    (["mp-search", "--budget-mb", "0", "--out", "p.json"],
     "vitq mp-search: error: argument --budget-mb: 0 must be a positive number"),
    (["quantize", "--bits", "0"],
     "vitq quantize: error: argument --bits: 0 bits is out of range: use an integer in 2..16"),
    (["quantize", "--w-bits", "1"],
     "vitq quantize: error: argument --w-bits: 1 bits is out of range: use an integer in 2..16"),
    (["bench", "--bits", "8", "1"], "vitq bench: error: argument --bits: 1 bits is out of range: use an integer in 2..16"),
    (["quantize", "--smoothquant-alpha", "1.5"],
     "vitq quantize: error: argument --smoothquant-alpha: 1.5 must be a number in [0, 1]"),
    (["export", "--opset", "0", "--out", "x.onnx"],
     "vitq export: error: argument --opset: 0 is out of range: use an integer in 13..20"),
    (["quantize", "--config", "missing.json"], "vitq quantize: error: argument --config: missing.json does not exist"),
    (["quantize", "--plan", "missing.json"], "vitq quantize: error: argument --plan: missing.json does not exist"),
])
def test_bad_flag_values_are_usage_errors(args, line, tmp_path):
    res = vitq(*args, cwd=tmp_path)
    assert usage_error(res) == line
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("args,line", [
    (["quantize", "--calib", "no_such_dir"], "vitq: error: --calib: image folder no_such_dir does not exist"),
    (["quantize", "--eval-data", "no_such_dir"], "vitq: error: --eval-data: image folder no_such_dir does not exist"),
    (["eval", "--data", "no_such_dir"], "vitq: error: --data: image folder no_such_dir does not exist"),
    (["export", "--calib", "no_such_dir", "--out", "x.onnx"],
     "vitq: error: --calib: image folder no_such_dir does not exist"),
    (["mp-search", "--calib", "no_such_dir", "--out", "p.json"],
     "vitq: error: --calib: image folder no_such_dir does not exist"),
    (["quantize", "--calib", "fmnist-subset:train"],
     "vitq: error: --calib: 'fmnist-subset:train': split must be one of ('calib', 'test')"),
])
def test_missing_data_is_one_line_before_the_model_is_built(args, line, tmp_path):
    res = vitq(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert only_line(res).startswith(line)  # no log line: no model built, no image loaded
    assert list(tmp_path.iterdir()) == []


def test_config_file_that_is_not_json_names_the_flag(tmp_path):
    (tmp_path / "c.json").write_text("{w_bits: 4}")
    res = vitq("quantize", "--config", "c.json", cwd=tmp_path)
    assert res.returncode == 2
    assert only_line(res).startswith("vitq: error: --config c.json: config is not valid JSON: ")


@pytest.mark.parametrize("model_arg,line", [
    ("img_size=abc", "vitq: error: --model-arg img_size=abc: timm:vit_tiny_patch16_224 rejected the architecture "
                     "argument img_size='abc': TypeError: "),
    ("no_such_arg=3", "vitq: error: --model-arg no_such_arg=3: timm:vit_tiny_patch16_224 has no architecture "
                      "argument 'no_such_arg' (TypeError: "),
])
def test_bad_model_arg_names_the_flag_and_key(model_arg, line, folders):
    res = vitq("quantize", *TINY_VIT_CLI_ARGS, "--model-arg", model_arg, "--calib", str(folders / "calib"),
               "--out", str(folders / "out"))
    assert res.returncode == 2
    assert only_line(res).startswith(line)
    assert not (folders / "out").exists()


@pytest.mark.parametrize("content", [b"\x08\x07garbage that is not a protobuf \xff\xfe" * 4, b"{}"])
def test_corrupt_onnx_file_is_one_line_naming_it(content, folders):
    pytest.importorskip("onnx")
    bad = folders / "bad.onnx"
    bad.write_bytes(content)
    res = vitq("eval", "--onnx", str(bad), "--data", str(folders / "test"))
    assert res.returncode == 2
    assert only_line(res).startswith(f"vitq: error: --onnx {bad}")


# -- 3. --no-sqb-shift alone --------------------------------------------------------------------------------

@pytest.mark.parametrize("args,line", [
    (["quantize", "--no-sqb-shift"], "vitq: error: --no-sqb-shift applies to SQ-b, which method liu2021 does not use: "
                                     "add --sqb, or use a method with SQ-b (mptq, mptq-sqb)"),
    (["quantize", "--method", "mptq-optm", "--no-sqb-shift"],
     "vitq: error: --no-sqb-shift applies to SQ-b, which method mptq-optm does not use"),
    (["bench", "--methods", "mptq", "minmax", "--no-sqb-shift", "--no-ablation"],
     "vitq: error: --no-sqb-shift applies to SQ-b, which method minmax does not use"),
    (["bench", "--sqb", "--peers", "--methods", "liu2021", "--no-ablation"],
     "vitq: error: --peers adds repq-vit: sqb=True conflicts with method='repq-vit'"),
])
def test_flags_that_would_be_ignored_or_fail_later_are_errors(args, line, tmp_path):
    res = vitq(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert only_line(res).startswith(line)
    assert list(tmp_path.iterdir()) == []


def test_no_sqb_shift_where_it_applies_is_accepted():
    from vitq.cli import build_parser
    from vitq.cli.common import config_from_args

    ap = build_parser()
    assert config_from_args(ap.parse_args(["quantize", "--sqb", "--no-sqb-shift"])).recipe().smoothing == "smoothquant"
    assert config_from_args(ap.parse_args(["quantize", "--method", "mptq-sqb", "--no-sqb-shift"])).sqb_shift is False

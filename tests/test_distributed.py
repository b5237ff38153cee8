"""Data-parallel calibration and evaluation (:mod:`vitq.distributed`): 2 gloo ranks on CPU under ``torchrun``
against one process on all the images.

Each ``torchrun`` launch costs seconds of interpreter start-up per rank, so one launch checks every recipe
(``tests/dist_scenarios.py recipes``); the command-line tests launch ``torchrun -m vitq`` itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT_CLI_ARGS

import vitq
from vitq import distributed
from vitq.cli.app import main

HERE = Path(__file__).resolve().parent
SRC = Path(vitq.__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
import dist_scenarios  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 300, monitor_interval: float | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node 2 ARGS`` with this checkout's vitq, 1 thread a rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port())]
    if monitor_interval is not None:
        cmd += ["--monitor-interval", str(monitor_interval)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "VITQ_COMPILE": "0"}
    return subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    """vitq's error lines (a progress bar of another rank may precede one on the same line)."""
    return [line[line.index("vitq: error"):] for line in stderr.splitlines() if "vitq: error" in line]


# -- one process: everything is the identity ---------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(8, 2), (7, 2), (5, 3), (2, 2), (100, 8)], ids=str)
def test_shard_ranges_tile_the_images_in_order(n, world):
    blocks = [distributed.shard_range(n, world, r) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))
    assert max(len(b) for b in blocks) - min(len(b) for b in blocks) <= 1


def test_single_process_collectives_are_the_identity():
    t = torch.arange(6.0).reshape(3, 2)
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.shard(t) is t and distributed.all_gather_rows(t) is t
    assert distributed.all_reduce_sum(2.5) == 2.5 and distributed.broadcast_object({"a": 1}) == {"a": 1}
    with distributed.sharded():
        assert distributed.shard_sum(t) is t and distributed.shard_count(3) == 3 and distributed.shard_rows(t) is t
    with distributed.main_first() as writer:
        assert writer


# -- 2 ranks: the recipes ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes")
    t0 = time.perf_counter()
    p = torchrun(str(HERE / "dist_scenarios.py"), "recipes", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    res = torch.load(out / "recipes.pt", weights_only=False)
    res["seconds"] = time.perf_counter() - t0
    return res


@pytest.fixture(scope="module")
def one_process():
    torch.manual_seed(0)
    return dist_scenarios.quantize_all()


@pytest.mark.parametrize("method", dist_scenarios.METHODS)
def test_two_ranks_calibrate_the_model_one_process_does(two_ranks, one_process, method):
    """Every interval (quantizer scale buffers), frozen weight and corrected bias equal bit for bit; with block
    reconstruction (data-parallel gradients) the weights, and the intervals to 1e-4 relative."""
    got, want = two_ranks["states"][method], one_process["states"][method]
    assert got.keys() == want.keys()
    if method.endswith("-recon"):
        # reconstruction trains data-parallel: gradients summed over the ranks (float order differs), so
        # its learned intervals agree to float precision and its rounding decisions (all of them here) match
        diff = {k: float(((got[k] - want[k]).abs() / want[k].abs().clamp_min(1e-12)).max())
                for k in want if torch.is_floating_point(want[k]) and not torch.equal(got[k], want[k])}
        assert all(d < 1e-4 for d in diff.values()), f"{method}: {diff}"
        assert all(torch.equal(got[k], want[k]) for k in want if k.endswith(".weight")), method
    else:
        differ = [k for k in want if not torch.equal(got[k], want[k])]
        assert not differ, f"{method}: {differ[:5]}"
    # the objective values themselves are float64 sums in another order: equal to ~1e-12, not bits
    for (name, s0, e0, _), (_, s1, e1, _) in zip(one_process["reports"][method], two_ranks["reports"][method]):
        if s0 is not None:
            assert s1 == pytest.approx(s0, rel=1e-9, abs=1e-12), name
            assert e1 == pytest.approx(e0, rel=1e-9, abs=1e-12), name


def test_two_ranks_evaluate_as_one_process(two_ranks, one_process):
    assert two_ranks["top1"] == one_process["top1"]
    assert torch.equal(two_ranks["predictions"], one_process["predictions"])  # gathered in image order
    assert two_ranks["predictions"].shape == (dist_scenarios.NUM_TEST,)
    assert two_ranks["comm"]["collectives"] > 0 and two_ranks["comm"]["bytes"] > 0


def test_a_failing_rank_is_reported_to_its_peer(tmp_path):
    p = torchrun(str(HERE / "dist_scenarios.py"), "peer-fails", str(tmp_path), monitor_interval=2)
    assert p.returncode != 0
    message, failed_rank, from_peer = (tmp_path / "rank0.txt").read_text().splitlines()
    assert message == "rank 1 of 2 failed: ValueError: rank 1 cannot read image 3"
    assert failed_rank == "1" and from_peer == "True"


# -- 2 ranks: the command line ----------------------------------------------------------------------------------
def _cli_args(folders: Path) -> list[str]:
    return [*TINY_VIT_CLI_ARGS, "--checkpoint", str(folders / "w.safetensors"), "--calib", str(folders / "calib"),
            "--eval-data", str(folders / "test"), "--num-candidates", "16", "--max-iters", "2", "--no-report"]


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"): stdout.rindex("}") + 1])


def test_torchrun_vitq_quantize_and_eval_equal_one_process(folders, capsys):
    from safetensors.torch import load_file

    args = _cli_args(folders) + ["--method", "liu2021-gptq"]
    p = torchrun("-m", "vitq", "--threads", "1", "quantize", *args, "--out", str(folders / "two"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert main(["--threads", "1", "quantize", *args, "--out", str(folders / "one")]) == 0
    one = _summary(capsys.readouterr().out)
    two = _summary(p.stdout)  # printed once, by rank 0
    assert p.stdout.count('"top1"') == 1 and two.pop("world_size") == 2
    for s in (one, two):
        s.pop("calib_seconds")
    assert two == one
    a, b = load_file(folders / "one" / "model.safetensors"), load_file(folders / "two" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    p = torchrun("-m", "vitq", "eval", "--quantized", str(folders / "two"), "--data", str(folders / "test"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert main(["eval", "--quantized", str(folders / "two"), "--data", str(folders / "test")]) == 0
    one, two = _summary(capsys.readouterr().out), _summary(p.stdout)
    assert two.pop("world_size") == 2 and two == one


def test_a_failing_rank_stops_every_rank_with_one_error_and_no_output(folders):
    out = folders / "out"
    p = torchrun(str(HERE / "dist_scenarios.py"), "cli-fail-rank1", str(folders / "unused"), "--threads", "1",
                 "quantize", *_cli_args(folders), "--out", str(out))
    assert p.returncode != 0
    errors = _error_lines(p.stderr)
    assert len(errors) == 1, p.stderr[-3000:]
    assert errors[0].startswith("vitq: error (rank 1 of 2): ") and "injected failure on rank 1" in errors[0]
    assert not out.exists() and not list(folders.glob(".*resume*"))


def test_a_hanging_rank_is_named_after_the_timeout(folders):
    out = folders / "out"
    t0 = time.perf_counter()
    p = torchrun(str(HERE / "dist_scenarios.py"), "cli-hang-rank1", str(folders / "unused"), "--threads", "1",
                 "--dist-timeout", "3", "quantize", *_cli_args(folders), "--out", str(out))
    assert p.returncode != 0
    errors = _error_lines(p.stderr)
    assert len(errors) == 1, p.stderr[-3000:]
    assert errors[0].startswith("vitq: error (rank 0 of 2): rank 1 of 2 did not reach collective"), errors[0]
    assert "within 3s" in errors[0]
    assert not out.exists()
    assert time.perf_counter() - t0 < 100  # the sleeping rank (120 s) was not waited for


def test_shard_positions_split_a_minibatch_between_ranks(monkeypatch):
    idx = torch.tensor([7, 0, 3, 4, 9])
    # in one process every index is in the (only) shard, in the minibatch's order
    assert torch.equal(distributed.shard_positions(idx, 10), idx)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    got = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        got.append(distributed.shard_positions(idx, 10).tolist())
    assert got == [[0, 3, 4], [2, 4]]  # rank 0 holds samples 0-4, rank 1 samples 5-9

"""``vitq bench``: the flags reach the runners (the runners themselves are tested in tests/bench, tests/mp)."""

import vitq.bench.mp_bench as mp_bench
import vitq.bench.runner as runner
from vitq.cli import main


def test_bench_flags_reach_run_bench(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(runner, "run_bench", lambda name, **kw: seen.append((name, kw)))
    # (--sqb with --peers is refused before any run: repq-vit, one of the peers, has its own reparameterisation)
    assert main(["bench", "--quick", "--model", "fmnist-vit", "--bits", "6", "--methods", "minmax", "--optm",
                 "--peers", "--out", "res"]) == 0
    (name, kw), = seen
    assert name == "fmnist-vit" and kw["bits"] == (6,) and kw["methods"] == ("minmax",)
    assert kw["num_calib"] == (32,) and kw["num_test"] == 500 and kw["out_dir"] == "res"
    assert kw["config_overrides"] == {"optm": True} and kw["peers"] is True and kw["ablation"] is True
    assert "wrote res/fmnist-vit.json" in capsys.readouterr().out


def test_cli_no_uniform_skips_the_uniform_rows(monkeypatch):
    seen = []
    monkeypatch.setattr(mp_bench, "run_mp_rows", lambda name, **kw: seen.append(kw) or [])
    assert main(["bench", "--mp", "greedy", "--model", "fmnist-vit", "--bits", "6", "--no-uniform",
                 "--greedy-images", "8"]) == 0
    assert main(["bench", "--mp", "hessian", "--model", "fmnist-vit", "--bits", "6", "--fully-quantized"]) == 0
    assert seen[0]["uniform"] is False and seen[1]["uniform"] is True
    assert seen[0]["greedy_images"] == 8 and seen[1]["greedy_images"] is None
    assert seen[1]["config_overrides"] == {"fully_quantized": True}


def test_detection_bench_gets_the_recipe_flags_and_every_calibration_size(monkeypatch, capsys):
    import vitq.bench.detection as detection

    seen = []
    monkeypatch.setattr(detection, "run_detection_bench", lambda name, **kw: seen.append((name, kw)))
    assert main(["bench", "--model", "detr-synth", "--bits", "6", "--methods", "liu2021-pc-asym",
                 "--recon-iters", "50", "--num-calib", "32", "256", "--out", "res"]) == 0
    assert [kw["num_calib"] for _, kw in seen] == [32, 256]
    assert all(n == "detr-synth" and kw["config_overrides"] == {"recon_iters": 50} for n, kw in seen)
    seen.clear()
    assert main(["bench", "--model", "detr-synth", "--bits", "6", "--out", "res"]) == 0
    (_, kw), = seen  # the detection table's default: 32 calibration canvases, no overrides, --seed's one seed
    assert kw["num_calib"] == 32 and kw["config_overrides"] == {} and kw["seeds"] == (0,)
    assert "wrote res/detr-synth.json" in capsys.readouterr().out
    seen.clear()
    assert main(["bench", "--model", "detr-synth", "--bits", "6", "--seeds", "0", "1", "2", "--out", "res"]) == 0
    assert seen[0][1]["seeds"] == (0, 1, 2)


def test_seeds_is_refused_where_it_would_be_ignored(capsys):
    """Only the detection table averages seeds; elsewhere ``--seeds`` is an error, not one silent seed."""
    assert main(["bench", "--model", "fmnist-vit", "--seeds", "0", "1"]) != 0
    assert "benchmarks/lowbit.py" in capsys.readouterr().err
    assert main(["bench", "--model", "detr-synth", "--mp", "nuclear", "--seeds", "0", "1"]) != 0

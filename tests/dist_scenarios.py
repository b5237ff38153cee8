"""What ``tests/test_distributed.py`` runs on 2 ranks under ``torchrun`` (gloo, CPU), and in one process for
the reference. Launched as ``python -m torch.distributed.run --nproc-per-node 2 tests/dist_scenarios.py
SCENARIO OUT_DIR [ARGS...]``; rank 0 writes what the test compares into ``OUT_DIR``.

- ``recipes``: a tiny ViT quantized with each of :data:`METHODS` on the ranks' shards of the calibration
  images (state dicts: every interval, frozen weight and corrected bias) and evaluated on their shards of
  the test images (top-1 from counts, gathered predictions).
- ``peer-fails``: rank 1 fails outside any collective; rank 0 writes the error its collective raised.
- ``cli-fail-rank1 ARGV...`` / ``cli-hang-rank1 ARGV...``: ``vitq ARGV`` with rank 1's first op search
  raising / sleeping (a failing or a hung rank), the exit status as this process's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VITQ_COMPILE", "0")

import torch  # noqa: E402

#: the recipes whose distributed calibration must equal one process's: Liu et al. (Pearson + ranking + bias
#: correction), MPTQ-ViT (SQ-b folding, OPT-m two-region quantizer), GPTQ rounding, PTQ4ViT (Hessian
#: objective, twin-uniform quantizers), RepQ-ViT (quantiles, affine and log-sqrt2 quantizers), Percentile,
#: block reconstruction
METHODS = ("liu2021", "mptq", "liu2021-gptq", "gptq", "ptq4vit", "repq-vit", "percentile", "liu2021-pc-recon")
#: block reconstruction: a few steps, the search on the first 4 images (all on rank 0: gathered, replicated)
RECON = {"recon_iters": 5, "search_images": 4}
NUM_CALIB, NUM_TEST = 8, 10


def tiny_model():
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_vit

    return make_tiny_vit()


def images():
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(NUM_CALIB, 3, 32, 32, generator=g)
    test = torch.randn(NUM_TEST, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (NUM_TEST,), generator=g)
    return calib, test, labels


def quantize_all(methods=METHODS) -> dict:
    """``{method: state dict}`` and the evaluation of the first method, on this rank's shards."""
    import vitq
    from vitq import distributed
    from vitq.eval.sharded import gather_predictions, predict_shard, top1_all

    model = tiny_model()
    calib, test, labels = images()
    out: dict = {"states": {}, "reports": {}}
    for m in methods:
        cfg = vitq.QuantConfig(method=m, num_candidates=16, max_iters=2, seed=0,
                               **(RECON if m.endswith("-recon") else {}))
        q = vitq.quantize(model, cfg)
        rep = vitq.calibrate(q, distributed.shard(calib), progress=False)
        vitq.freeze(q)
        out["states"][m] = {k: v.clone() for k, v in q.state_dict().items()}
        out["reports"][m] = [(o.name, o.loss_start, o.loss_end, o.scales) for o in rep.ops]
        if m == methods[0]:
            logits = predict_shard(q, test, batch_size=4)
            out["top1"] = top1_all(logits, labels)
            out["predictions"] = gather_predictions(logits)
    out["comm"] = distributed.COMM.as_dict()
    return out


def _patch_rank1(action) -> None:
    """Rank 1's first op search does ``action()`` instead (a failure or a hang)."""
    from vitq import distributed
    from vitq.calibration import engine

    if distributed.rank() != 1:
        return
    real = engine.search_op

    def search_op(*args, **kwargs):
        action()
        return real(*args, **kwargs)

    engine.search_op = search_op


def peer_fails(out: Path) -> int:
    """Rank 1 raises, posts its error and exits; rank 0, waiting in a collective, writes what it was told."""
    from vitq import distributed

    distributed.init_from_env("cpu", timeout_s=60)
    if distributed.rank() == 1:
        try:
            raise ValueError("rank 1 cannot read image 3")
        except ValueError as e:
            distributed.report_failure(e)
        distributed.shutdown()
        return 1
    try:
        distributed.all_reduce_sum(torch.ones(3))
    except distributed.DistributedError as e:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rank0.txt").write_text(f"{e}\n{e.failed_rank}\n{e.from_peer}")
        return 2
    return 0


def main(argv: list[str]) -> int:
    scenario, out = argv[0], Path(argv[1])
    torch.set_num_threads(1)
    if scenario == "recipes":
        from vitq import distributed

        distributed.init_from_env("cpu", timeout_s=60)
        try:
            res = quantize_all()
            if distributed.is_main():
                out.mkdir(parents=True, exist_ok=True)
                torch.save(res, out / "recipes.pt")
        finally:
            distributed.shutdown()
        return 0
    if scenario == "peer-fails":
        return peer_fails(out)
    from vitq.cli.app import main as vitq_main

    def fail():
        raise RuntimeError("injected failure on rank 1")

    def hang():
        time.sleep(120)

    if scenario in ("cli-fail-rank1", "cli-hang-rank1"):
        import vitq.distributed as distributed

        real_init = distributed.init_from_env

        def init(*a, **k):  # the patch needs the rank, known once the group is up
            done = real_init(*a, **k)
            _patch_rank1(fail if scenario == "cli-fail-rank1" else hang)
            return done

        distributed.init_from_env = init
        return vitq_main(argv[2:])
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    from vitq.distributed import exit_process

    exit_process(main(sys.argv[1:]))  # as `vitq` itself ends a rank (no interpreter finalization)

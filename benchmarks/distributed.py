"""Data-parallel calibration on torchrun: 1 process x 2 threads vs 2 processes x 1 thread (gloo, CPU), the
full Liu et al. method (similarity + ranking + bias correction, C=100, 20 rounds) on a DeiT-S-shaped model
(timm ``deit_small_patch16_224``, seeded random init, the ``calibration_speed.py`` cases: by default
``deit-s-d2-128``, two DeiT-S blocks, as the calibration is block by block and every block costs the same)
and 128 seeded noise images. Writes ``benchmarks/results/distributed.json``:

- one row per configuration: ``calib_seconds``, the per-rank split of that time into compute, time inside
  collectives and, of that, the pure communication (collectives x measured latency + bytes / measured
  bandwidth; the rest is waiting for the slower rank), ``bytes`` all-reduced / gathered, ``load_avg``;
- ``identical``: the 2-process model (every interval, weight and bias) equals the 1-process one bit for bit;
- a fit row: the replicated (done by every rank, not divided: weight-side work such as each candidate's
  weight codes and Gram matrix) and the divisible compute of one rank at 1 thread, from 1 process x 1 thread
  and the 2 processes x 1 thread run (``--fit-case``: the same model by default), and the projected
  speed-up for 8 and 64 ranks.

Run (heavy: about 6 minutes on 2 quiet cores for the default 2-block model, whose blocks are DeiT-S's; about
25 minutes with ``--case deit-s-128``, all 12 blocks; never beside another heavy job):

    python benchmarks/distributed.py

Each configuration runs in its own subprocess(es), one after the other, with the eager kernels
(``VITQ_COMPILE=0``): the fused moments kernel of ``vitq.quantizers.kernels`` rounds per-sample sums
differently with the number of rows it is called on, so with it a rank's shard and the whole set agree to
float32 rounding, not bits (an op may then pick a neighbouring candidate on a near tie).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from calibration_speed import CASES as SPEED_CASES  # noqa: E402

#: name: (timm architecture, depth, images); the smoke case checks this script in a minute
CASES = {**SPEED_CASES, "smoke": ("deit_small_patch16_224", 1, 8)}

RESULTS = Path(__file__).parent / "results" / "distributed.json"


def worker(case: str, threads: int, out: Path) -> None:
    """One rank (or the single process): calibrate, then measure the collectives' latency and bandwidth."""
    import torch

    import vitq
    from vitq import distributed
    from vitq.models.loading import create_model

    torch.set_num_threads(threads)
    distributed.init_from_env("cpu", timeout_s=1800)
    arch, depth, n = CASES[case]
    torch.manual_seed(0)
    model = create_model(f"timm:{arch}", depth=depth)
    images = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    q = vitq.quantize(model, vitq.QuantConfig(method="liu2021", w_bits=8, a_bits=8))
    mine = distributed.shard(images)
    distributed.barrier()
    distributed.COMM.reset()
    t0 = time.perf_counter()
    rep = vitq.calibrate(q, mine, progress=False)
    seconds = time.perf_counter() - t0
    comm = distributed.COMM.as_dict()
    stats = {"rank": distributed.rank(), "images": int(mine.shape[0]), "calib_seconds": seconds, **comm,
             "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if distributed.is_distributed():
        # latency of a scalar all-reduce (what nearly every collective of the search is) and bandwidth
        distributed.barrier()
        k = 2000
        t = time.perf_counter()
        for _ in range(k):
            distributed.all_reduce_sum(torch.zeros(1, dtype=torch.float64))
        stats["latency_s"] = (time.perf_counter() - t) / k
        big = torch.zeros(1 << 22)  # 16 MiB
        distributed.barrier()
        t = time.perf_counter()
        for _ in range(5):
            distributed.all_reduce_sum(big)
        stats["bandwidth_bytes_s"] = 5 * big.numel() * 4 / (time.perf_counter() - t)
    ranks = distributed.all_gather_object(stats)
    if distributed.is_main():
        torch.save({"state": q.state_dict(), "ops": [(o.name, o.scales) for o in rep.ops], "ranks": ranks}, out)
    distributed.shutdown()


def launch(case: str, procs: int, threads: int, tmp: Path) -> dict:
    out = tmp / f"{case}-{procs}x{threads}.pt"
    me = [str(Path(__file__).resolve()), "--_worker", case, str(threads), str(out)]
    cmd = ([sys.executable, *me] if procs == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
            "127.0.0.1", "--master-port", str(29500 + os.getpid() % 1000), *me])
    # eager kernels: the fused moments kernel (torch.compile) rounds per-sample sums differently with the
    # number of rows per call, so with it a rank's shard and the whole set agree to float32 rounding only
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VITQ_COMPILE": "0"}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    import torch

    res = torch.load(out, weights_only=False)
    res["wall_seconds"] = time.perf_counter() - t0
    res["load_avg"] = [round(x, 2) for x in load_before] + [round(os.getloadavg()[0], 2)]
    return res


def split(res: dict) -> dict:
    """Per configuration: the slowest rank's calibration seconds, and per rank compute / collectives."""
    ranks = res["ranks"]
    lat = max((r.get("latency_s", 0.0) for r in ranks), default=0.0)
    bw = min((r.get("bandwidth_bytes_s", math.inf) for r in ranks), default=math.inf)
    rows = []
    for r in ranks:
        pure = r["collectives"] * lat + r["bytes"] / bw
        rows.append({"rank": r["rank"], "images": r["images"], "calib_seconds": round(r["calib_seconds"], 1),
                     "compute_seconds": round(r["calib_seconds"] - r["seconds"], 1),
                     "in_collectives_seconds": round(r["seconds"], 2), "communication_seconds": round(pure, 2),
                     "waiting_seconds": round(max(0.0, r["seconds"] - pure), 2), "collectives": r["collectives"],
                     "bytes": r["bytes"], "peak_rss_gib": round(r["peak_rss_gib"], 2)})
    return {"calib_seconds": round(max(r["calib_seconds"] for r in ranks), 1), "ranks": rows,
            "latency_us": round(lat * 1e6, 1) if lat else None,
            "bandwidth_mb_s": round(bw / 1e6, 1) if math.isfinite(bw) else None}


def project(replicated: float, divisible: float, collectives: int, nbytes: int, latency: float,
            bandwidth: float) -> dict:
    """Calibration seconds and speed-up over one rank (1 thread each) at 2, 8 and 64 ranks: compute
    ``replicated + divisible / N``; the search's collectives are scalars (latency-bound, recursive doubling:
    log2(N) steps), the rare large ones (gathers for LayerNorm folding and quantiles) by bandwidth."""
    one = replicated + divisible
    out = {}
    for world in (2, 8, 64):
        compute = replicated + divisible / world
        comm = collectives * latency * math.log2(world) + nbytes * 2 * (world - 1) / world / bandwidth
        out[str(world)] = {"compute_seconds": round(compute, 1), "communication_seconds": round(comm, 2),
                           "calib_seconds": round(compute + comm, 1), "speedup": round(one / (compute + comm), 2)}
    return out


def same_model(a: dict, b: dict) -> tuple[bool, int, float]:
    import torch

    differ = [k for k in a["state"] if not torch.equal(a["state"][k], b["state"][k])]
    ops = sum(x[1] != y[1] for x, y in zip(a["ops"], b["ops"]))
    worst = max([(a["state"][k].double() - b["state"][k].double()).abs().max().item() for k in differ] or [0.0])
    return not differ, ops, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="deit-s-d2-128", choices=sorted(CASES),
                    help="the model and images (default: DeiT-S blocks, 2 of them, 128 images; deit-s-128 for all 12)")
    ap.add_argument("--fit-case", default="deit-s-d2-128", choices=sorted(CASES),
                    help="the model of the replicated / divisible compute fit (1x1 and 2x1)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default %(default)s)")
    ap.add_argument("--_worker", nargs=3, metavar=("CASE", "THREADS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        case, threads, out = args._worker
        worker(case, int(threads), Path(out))
        from vitq.distributed import exit_process

        exit_process(0)  # as `vitq` ends a rank: no interpreter finalization
    from vitq.utils.atomic import atomic_write_text

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        one = launch(args.case, 1, 2, tmp)
        two = launch(args.case, 2, 1, tmp)
        fit1 = launch(args.fit_case, 1, 1, tmp)
        fit2 = two if args.fit_case == args.case else launch(args.fit_case, 2, 1, tmp)
    identical, ops_other, worst = same_model(one, two)
    arch, depth, n = CASES[args.case]
    base = {"case": args.case, "model": arch, "depth": depth, "num_calib": n, "method": "liu2021",
            "num_candidates": 100, "search": "fast", "kernels": "eager (VITQ_COMPILE=0)", "backend": "gloo",
            "command": command}
    rows = []
    for procs, threads, res in ((1, 2, one), (2, 1, two)):
        rows.append({**base, "config": f"{procs} process x {threads} threads", "processes": procs, "threads": threads,
                     **split(res), "wall_seconds": round(res["wall_seconds"], 1), "load_avg": res["load_avg"]})
    rows[1].update(identical=identical, ops_with_other_interval=ops_other, max_abs_diff=worst,
                   speedup=round(rows[0]["calib_seconds"] / rows[1]["calib_seconds"], 2),
                   bytes_all_reduced=sum(r["bytes"] for r in rows[1]["ranks"]))

    # Per rank at 1 thread: compute(N) = replicated + divisible / N (the fit model's blocks are DeiT-S's).
    c1 = split(fit1)["ranks"][0]["compute_seconds"]
    s2 = split(fit2)
    c2 = max(r["compute_seconds"] for r in s2["ranks"])
    replicated = max(0.0, 2 * c2 - c1)
    divisible = max(0.0, c1 - replicated)
    fit_identical = same_model(fit1, fit2)[0]
    two_ranks = rows[1]["ranks"]
    coll = max(r["collectives"] for r in two_ranks)
    nbytes = max(r["bytes"] for r in two_ranks)
    lat, bw = rows[1]["latency_us"] * 1e-6, rows[1]["bandwidth_mb_s"] * 1e6
    # scale the fit to the measured case: its 1-rank compute at 1 thread ~ 2x the 2-process per-rank compute
    c1_case = max(r["compute_seconds"] for r in two_ranks) * c1 / c2 if c2 else 0.0
    frac = replicated / c1 if c1 else 0.0
    proj = project(c1_case * frac, c1_case * (1 - frac), coll, nbytes, lat, bw)
    # more images: the divisible part grows with them, the replicated one (weight-side work per candidate)
    # and the number of collectives do not (one per candidate evaluation)
    proj_1024 = project(c1_case * frac, c1_case * (1 - frac) * 1024 / n, coll, nbytes, lat, bw)
    rows.append({**base, "config": "fit and projection", "fit_case": args.fit_case,
                 "fit_one_rank_compute_seconds": c1, "fit_two_ranks_compute_seconds_per_rank": c2,
                 "fit_identical": fit_identical, "replicated_seconds": round(replicated, 1),
                 "divisible_seconds": round(divisible, 1), "replicated_fraction": round(frac, 3),
                 "fit_load_avg": [fit1["load_avg"], fit2["load_avg"]],
                 "one_rank_compute_seconds_1_thread": round(c1_case, 1), "latency_us": rows[1]["latency_us"],
                 "collectives_per_rank": coll, "bytes_per_rank": nbytes, "projection": proj,
                 "projection_1024_images": proj_1024,
                 "assumptions": "1 thread per rank; compute(N) = replicated + divisible/N from the fit; communication "
                                "= collectives x localhost gloo latency x log2(N) + bytes x 2(N-1)/N / bandwidth "
                                "(a data-centre network has latencies of the same order); equal shards"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Calibration time and peak memory of the full Liu et al. method (similarity + ranking + bias
correction, C=100 candidates, alternating search) on DeiT-shaped models, fast search vs the reference.

Each case runs in its own subprocess so peak RSS is that case's alone. Rows go to
benchmarks/results/calibration_speed.json (merged by case). Example (the committed results):

    python benchmarks/calibration_speed.py --cases deit-s-32 --threads 2
    python benchmarks/calibration_speed.py --cases deit-s-32 --reference --threads 2
    python benchmarks/calibration_speed.py --cases deit-s-d2-32 --reference --same-inputs --threads 2

``--reference`` runs the reference search over the whole model: from the first op on which the two
pick other intervals, later ops see other inputs, so their objectives differ by more than the search
does. ``--same-inputs`` runs both searches on every op's own data (copies of the op, the data the
calibration gives it) and counts the ops where they pick another interval.

Weights are random (timm init, seeded) and images are seeded Gaussian noise: the timing and memory of
the search do not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (timm architecture, depth, images)
    "deit-s-32": ("deit_small_patch16_224", 12, 32),
    "deit-s-64": ("deit_small_patch16_224", 12, 64),
    "deit-s-128": ("deit_small_patch16_224", 12, 128),
    "deit-s-d6-32": ("deit_small_patch16_224", 6, 32),
    "deit-b-128": ("deit_base_patch16_224", 12, 128),
    # Short cases: the reference search in the same run (a ratio on a noisy shared machine), and the
    # peak memory of DeiT-Base with 128 images (calibration holds one block's data at a time, so the
    # peak does not grow with depth; compare deit-s-d6-32 with deit-s-32).
    "deit-s-d2-32": ("deit_small_patch16_224", 2, 32),
    "deit-s-d2-64": ("deit_small_patch16_224", 2, 64),
    "deit-s-d2-128": ("deit_small_patch16_224", 2, 128),
    "deit-b-d2-128": ("deit_base_patch16_224", 2, 128),
}
RESULTS = Path(__file__).parent / "results" / "calibration_speed.json"


def run_case(name: str, search: str, threads: int, num_candidates: int) -> dict:
    import torch

    import vitq
    from vitq.models.loading import create_model

    torch.set_num_threads(threads)
    arch, depth, n = CASES[name]
    torch.manual_seed(0)
    model = create_model(f"timm:{arch}", depth=depth)
    images = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cfg = vitq.QuantConfig(method="liu2021", w_bits=8, a_bits=8, num_candidates=num_candidates,
                           search="fast" if search == "same-inputs" else search)
    q = vitq.quantize(model, cfg)
    same = SameInputs(cfg) if search == "same-inputs" else None
    t0 = time.perf_counter()
    rep = vitq.calibrate(q, images, progress=False, on_op_data=same)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    load = os.getloadavg()[0]  # the machine is shared: a load above the thread count inflates seconds
    embed = model.embed_dim
    if same is not None:
        return {"case": name, "search": search, "ops": same.ops}
    return {"case": name, "search": search, "num_calib": n, "depth": depth, "dim": embed, "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak, 3), "threads": threads, "load_avg_1min": round(load, 2), "num_candidates": num_candidates,
            "ops": [{"name": o.name, "loss_end": o.loss_end, "scales": o.scales} for o in rep.ops]}


class SameInputs:
    """``on_op_data`` of :func:`vitq.calibrate`: runs the reference and the fast search on copies of each
    op with the very data the calibration gives it (same inputs, same ranking pairs), so a difference
    in the chosen interval is the search's own, not one carried over from an earlier op."""

    def __init__(self, cfg):
        self.cfg, self.spec, self.ops = cfg, cfg.recipe().search, []

    def __call__(self, name, op, data) -> None:
        import copy

        import torch

        from vitq.calibration.search import search_op

        c = self.cfg
        res = {"name": name}
        for search in ("reference", "fast"):
            shadow = copy.deepcopy(op)
            t0 = time.perf_counter()
            r = search_op(shadow, name, data, self.spec, num_candidates=c.num_candidates, max_iters=c.max_iters,
                          tol=c.tol, ranking_gamma=c.ranking_gamma, ranking_pairs=c.ranking_pairs,
                          ranking_margin=c.ranking_margin, generator=torch.Generator().manual_seed(c.seed),
                          search=search)
            qa, qb = shadow.quantizers()
            res[search] = {"seconds": time.perf_counter() - t0, "loss_end": r.loss_end,
                           "scales": [qa.scale.flatten().tolist(), qb.scale.flatten().tolist()]}
        self.ops.append(res)


def same_inputs_fields(ops: list[dict]) -> dict:
    """The same-inputs comparison as row fields: ops on another interval, largest objective gap
    (fast minus reference: > 0 where the fast search ended worse), and both searches' seconds."""
    gaps = [o["fast"]["loss_end"] - o["reference"]["loss_end"] for o in ops]
    return {"same_inputs_num_ops": len(ops),
            "same_inputs_ops_with_other_interval": sum(o["fast"]["scales"] != o["reference"]["scales"] for o in ops),
            "same_inputs_max_objective_diff": max(abs(g) for g in gaps),
            "same_inputs_max_fast_worse_by": max(0.0, max(gaps)),
            "same_inputs_reference_seconds": round(sum(o["reference"]["seconds"] for o in ops), 1),
            "same_inputs_fast_seconds": round(sum(o["fast"]["seconds"] for o in ops), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["deit-s-32"], choices=sorted(CASES))
    ap.add_argument("--reference", action="store_true", help="also run the reference search and compare")
    ap.add_argument("--same-inputs", action="store_true",
                    help="also run both searches on each op's own calibration data (one more run) and compare")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-candidates", type=int, default=100)
    ap.add_argument("--_child", nargs=2, metavar=("CASE", "SEARCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_case(args._child[0], args._child[1], args.threads, args.num_candidates)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vitq.bench.results import load_rows
    from vitq.utils.atomic import atomic_write_text

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    rows = load_rows(RESULTS)
    for case in args.cases:
        res = {}
        searches = ["fast"] + (["reference"] if args.reference else []) + (["same-inputs"] if args.same_inputs else [])
        for search in searches:
            out = subprocess.run([sys.executable, __file__, "--_child", case, search, "--threads", str(args.threads),
                                  "--num-candidates", str(args.num_candidates)], capture_output=True, text=True,
                                 check=True)
            res[search] = json.loads(out.stdout.strip().splitlines()[-1])
            if search == "same-inputs":
                print(f"{case} {search}: {same_inputs_fields(res[search]['ops'])}", flush=True)
            else:
                print(f"{case} {search}: {res[search]['seconds']} s, peak RSS {res[search]['peak_rss_gib']} GiB", flush=True)
        fast = res["fast"]
        row = {k: fast[k] for k in ("case", "num_calib", "depth", "dim", "seconds", "peak_rss_gib", "threads",
                                    "num_candidates", "load_avg_1min")}
        row["search"] = "fast"
        row["command"] = command
        prev = next((r for r in rows if r["case"] == case), {})
        if "reference" in res:
            ref = res["reference"]
            row["reference_seconds"] = ref["seconds"]
            row["reference_peak_rss_gib"] = ref["peak_rss_gib"]
            row["speedup"] = round(ref["seconds"] / fast["seconds"], 2)
            diffs = [abs(a["loss_end"] - b["loss_end"]) for a, b in zip(fast["ops"], ref["ops"])
                     if a["loss_end"] is not None and b["loss_end"] is not None]
            row["max_objective_diff"] = max(diffs) if diffs else 0.0
            row["ops_with_other_interval"] = sum(a["scales"] != b["scales"] for a, b in zip(fast["ops"], ref["ops"]))
            row["num_ops"] = len(fast["ops"])
        else:  # keep an earlier reference measurement of the same case, marked as such
            for k in ("reference_seconds", "reference_peak_rss_gib"):
                if k in prev:
                    row[k] = prev[k]
            row["reference_seconds"] = row.get("reference_seconds")
        if "same-inputs" in res:
            row.update(same_inputs_fields(res["same-inputs"]["ops"]))
        else:  # keep an earlier same-inputs comparison of the same case
            row.update({k: v for k, v in prev.items() if k.startswith("same_inputs_")})
        rows = [r for r in rows if r["case"] != case] + [row]
        atomic_write_text(RESULTS, json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()

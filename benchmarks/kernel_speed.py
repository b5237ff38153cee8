"""Per-call time of the fused (torch.compile) quantization kernels against the eager ops, and their
one-off compile cost: the numbers behind the size rule of :mod:`vitq.quantizers.kernels`.

    python benchmarks/kernel_speed.py --threads 2            # per-call times, fmnist-vit .. DeiT-S sizes
    python benchmarks/kernel_speed.py --threads 2 --compile  # + compile cost, cold and warm inductor cache

Each size is timed as the minimum over ``--repeats`` calls (the machine may be shared: the minimum is the
least disturbed call); the load average is printed beside the numbers. The compile cost is the first
call of each kernel in a fresh subprocess: "cold" with an empty inductor cache directory, "warm" a second
process on the same directory (what a second ``vitq quantize`` on the same machine pays).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# (label, shape of the activation / output tensor): fmnist-vit (32 images x 50 tokens, dim 96, 3 heads)
# and DeiT-S (32 images x 197 tokens, dim 384, 6 heads)
SIZES = [
    ("fmnist x 1600x96", (1600, 96)),
    ("fmnist x 1600x192", (1600, 192)),
    ("fmnist attn 32x3x50x50", (32, 3, 50, 50)),
    ("deit-s x 6304x384", (6304, 384)),
    ("deit-s x 6304x1152", (6304, 1152)),
    ("deit-s x 6304x1536", (6304, 1536)),
    ("deit-s attn 32x6x197x197", (32, 6, 197, 197)),
]
# per-sample moments: (n samples, elements per sample) of an op output
MOMENT_SIZES = [
    ("fmnist out 32x4800", (32, 4800)),
    ("fmnist out 32x9600", (32, 9600)),
    ("fmnist scores 32x7500", (32, 7500)),
    ("deit-s out 32x75648", (32, 75648)),
    ("deit-s out 32x302592", (32, 302592)),
    ("deit-s scores 32x232854", (32, 232854)),
]


def _best(fn, args: tuple, repeats: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def per_call(repeats: int) -> list[dict]:
    import torch

    from vitq.quantizers import kernels as k

    fq, codes = k._kernels()
    (mom,) = k._compile_checked("moments", (k._fused_sample_moments,), k._probe_moments, "moment kernels")
    g = torch.Generator().manual_seed(0)
    rows = []
    scale = torch.tensor(0.05)
    for label, shape in SIZES:
        x = torch.randn(shape, generator=g)
        out, c8 = torch.empty_like(x), torch.empty(shape, dtype=torch.int8)
        r = {"size": label, "numel": x.numel()}
        r["fq_eager_ms"] = 1e3 * _best(k._eager_fake_quant_into, (x, scale, -128, 127, out), repeats)
        r["fq_fused_ms"] = 1e3 * _best(fq, (x, scale, -128, 127, out), repeats)
        r["codes_eager_ms"] = 1e3 * _best(k._eager_codes_into, (x, scale, -128, 127, c8), repeats)
        r["codes_fused_ms"] = 1e3 * _best(codes, (x, scale, -128, 127, c8), repeats)
        rows.append(r)
    for label, shape in MOMENT_SIZES:
        o, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        r = {"size": label, "numel": o.numel()}
        r["moments_eager_ms"] = 1e3 * _best(k._eager_sample_moments, (o, t), repeats)
        r["moments_fused_ms"] = 1e3 * _best(mom, (o, t), repeats)
        rows.append(r)
    return rows


def first_calls() -> dict:
    """Seconds of the first call of each fused kernel in this (fresh) process, probes included."""
    import torch

    from vitq.quantizers import kernels as k

    out = {}
    t0 = time.perf_counter()
    fq, codes = k._kernels()  # compiles both on the probe's 1-D inputs, 0-d scale
    out["fake_quant+codes (probe, 1-D)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    k._compile_checked("moments", (k._fused_sample_moments,), k._probe_moments, "moment kernels")
    out["moments (probe)"] = time.perf_counter() - t0
    x = torch.randn(64, 96)
    for label, fn in [("fake_quant 2-D", lambda: fq(x, torch.tensor(0.1), -128, 127, torch.empty_like(x))),
                      ("codes 2-D int8", lambda: codes(x, torch.tensor(0.1), -128, 127,
                                                       torch.empty(x.shape, dtype=torch.int8))),
                      ("fake_quant 3-D, (k,1,1) scale", lambda: fq(x.expand(3, -1, -1), torch.full((3, 1, 1), 0.1),
                                                                  -128, 127, torch.empty(3, 64, 96)))]:
        t0 = time.perf_counter()
        fn()
        out[label] = time.perf_counter() - t0
    return out


def compile_cost() -> dict:
    env = {**os.environ, "VITQ_COMPILE": "1"}
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        for kind in ("cold", "warm"):
            p = subprocess.run([sys.executable, __file__, "--first-calls"], env=env, capture_output=True, text=True,
                               check=True)
            res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="also the compile cost (two fresh subprocesses)")
    ap.add_argument("--first-calls", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ["VITQ_COMPILE"] = "1"
    if args.first_calls:
        print(json.dumps(first_calls()))
        return 0
    print(f"threads {args.threads}, load average {os.getloadavg()}")
    for r in per_call(args.repeats):
        cells = [f"{k} {v:.3f}" for k, v in r.items() if k.endswith("_ms")]
        print(f"{r['size']:<26} numel {r['numel']:>9}  " + "  ".join(cells))
    if args.compile:
        for kind, d in compile_cost().items():
            print(f"compile ({kind} inductor cache): " + ", ".join(f"{k} {v:.2f}s" for k, v in d.items()))
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

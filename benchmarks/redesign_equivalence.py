"""Snapshot or compare what calibration produces, to check that a refactoring changed no number.

    python benchmarks/redesign_equivalence.py snapshot before.pt     # on the old code
    python benchmarks/redesign_equivalence.py snapshot after.pt      # on the new code
    python benchmarks/redesign_equivalence.py compare before.pt after.pt

For each method x bit-width (fmnist-vit, 32 calibration images, seed 0) the snapshot holds every
tensor of the frozen quantized model's state dict (weights, biases, every quantizer buffer) and its
logits on 256 shipped test images. ``compare`` prints the largest difference of each run and exits
1 if any run differs by more than ``--atol``.
"""

from __future__ import annotations

import argparse
import sys

import torch

METHODS = ("minmax", "liu2021", "mptq", "ptq4vit", "repq-vit")
BITS = (8, 6, 4)


def snapshot(path: str, methods, bits, num_test: int) -> None:
    import vitq
    from vitq.data.sources import load_images
    from vitq.models.loading import create_model, model_data_config

    torch.set_num_threads(1)
    model = create_model("vitq:fmnist-vit")
    dc = model_data_config(model)
    calib = load_images("fmnist-subset:calib", dc, num=32, seed=0)
    test = load_images("fmnist-subset:test", dc, num=num_test, seed=0)
    out = {}
    for m in methods:
        for b in bits:
            q = vitq.quantize(model, vitq.QuantConfig(w_bits=b, a_bits=b, method=m, seed=0))
            vitq.calibrate(q, calib.images, progress=False)
            vitq.freeze(q)
            with torch.no_grad():
                logits = q(test.images)
            out[f"{m}-w{b}a{b}"] = {"state": {k: v.clone() for k, v in q.state_dict().items()}, "logits": logits}
            print(f"{m} W{b}A{b}: top-1 {(logits.argmax(-1) == test.labels).float().mean():.4f}", flush=True)
    torch.save(out, path)


def compare(a_path: str, b_path: str, atol: float) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    worst_all = 0.0
    for run in a:
        if run not in b:
            print(f"{run}: missing in {b_path}")
            worst_all = float("inf")
            continue
        sa, sb = a[run]["state"], b[run]["state"]
        only = sorted(set(sa) ^ set(sb))
        worst, where = 0.0, ""
        for k in sorted(set(sa) & set(sb)):
            if sa[k].shape != sb[k].shape:
                worst, where = float("inf"), f"{k} shape {tuple(sa[k].shape)} vs {tuple(sb[k].shape)}"
                break
            d = (sa[k].double() - sb[k].double()).abs().max().item() if sa[k].numel() else 0.0
            if d > worst:
                worst, where = d, k
        dl = (a[run]["logits"] - b[run]["logits"]).abs().max().item()
        print(f"{run}: state max diff {worst:.3g} ({where}), logits max diff {dl:.3g}"
              + (f", keys in one only: {only[:6]}" if only else ""))
        worst_all = max(worst_all, worst, dl)
    return 0 if worst_all <= atol else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("path")
    s.add_argument("--methods", nargs="+", default=list(METHODS))
    s.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    s.add_argument("--num-test", type=int, default=256)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--atol", type=float, default=0.0)
    args = ap.parse_args()
    if args.cmd == "snapshot":
        snapshot(args.path, args.methods, tuple(args.bits), args.num_test)
        return 0
    return compare(args.a, args.b, args.atol)


if __name__ == "__main__":
    sys.exit(main())

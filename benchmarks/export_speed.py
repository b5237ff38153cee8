"""Real integer execution: ONNX Runtime int8 (QDQ export of a vitq model) vs ONNX Runtime fp32, and the
size of packed storage. Rows go to benchmarks/results/export.json (merged by kind, model, bits, batch).

    python benchmarks/export_speed.py                 # the full run (on a quiet machine)
    python benchmarks/export_speed.py --quick         # few images and repeats, for iteration

Speed rows (``kind: "speed"``), per model and batch size (32 and 1), 2 ORT threads (CPUExecutionProvider,
all graph optimizations, no thread spinning): fp32 and int8 sessions timed in interleaved runs over the
same images (the order alternates every run), images per second of each run's median, and the speedup
as the median of the per-run ratios. ``agreement`` is the fraction of test images whose ORT int8 argmax
equals the vitq simulation's argmax; ``top1_*`` are the top-1 of ORT int8, the simulation and the float
model (none for the random DeiT-S). ``file_mb`` is the int8 ONNX file, ``expected_mb`` its int8 weights
(1 byte each) plus float parts (4 bytes each).

Size rows (``kind: "size"``): the packed file (:func:`vitq.export.packing.save_packed`) at 8, 6, 4 bits
against ``params x bits / 8`` plus the float parts (MinMax weight intervals; sizes do not depend on them).

Models: ``deit-s`` (timm ``deit_small_patch16_224``, random init, MinMax on Gaussian images: speed
only), ``fmnist-vit`` and ``dinov2-s14-fmnist`` (W8A8 MinMax on 32 images of fmnist-subset:calib,
evaluated on fmnist-subset:test). ``--quick``: 4 calibration images, 32 test images (DeiT-S 16),
2 repeats, batch 1 timed on 8 images. The machine is shared: every row records the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "export.json"
MODELS = ("deit-s", "fmnist-vit", "dinov2-s14-fmnist")
KEY = ("kind", "model", "method", "bits", "batch")


def load(name: str, quick: bool):
    """(float model, calibration images, test images, test labels or None)."""
    from vitq.data.sources import load_images
    from vitq.models.loading import create_model, model_data_config

    if name == "deit-s":
        torch.manual_seed(0)
        model = create_model("timm:deit_small_patch16_224")
        g = torch.Generator().manual_seed(1)
        calib = torch.randn(4 if quick else 32, 3, 224, 224, generator=g)  # speed only: a few suffice
        test = torch.randn(16 if quick else 256, 3, 224, 224, generator=g)
        return model, calib, test, None
    model = create_model(f"vitq:{name}")
    dc = model_data_config(model)
    calib = load_images("fmnist-subset:calib", dc, num=4 if quick else 32, seed=0).images
    test = load_images("fmnist-subset:test", dc, num=32 if quick else 1000, seed=0)
    return model, calib, test.images, test.labels


def time_interleaved(fp32, int8, images: torch.Tensor, batch: int, repeats: int) -> dict:
    """Images/s of both sessions, timed alternately on the same batches after one warm-up pass each."""
    batches = list(images.split(batch))
    for m in (fp32, int8):
        m(batches[0])
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(repeats):
        for tag, m in ((("fp32", fp32), ("int8", int8)) if r % 2 == 0 else (("int8", int8), ("fp32", fp32))):
            t0 = time.perf_counter()
            for b in batches:
                m(b)
            rates[tag].append(images.shape[0] / (time.perf_counter() - t0))
    ratios = [i / f for i, f in zip(rates["int8"], rates["fp32"])]
    return {"ort_fp32_img_s": round(statistics.median(rates["fp32"]), 2),
            "ort_int8_img_s": round(statistics.median(rates["int8"]), 2),
            "speedup": round(statistics.median(ratios), 3), "speedup_runs": [round(x, 3) for x in ratios]}


def speed_rows(name: str, loaded: tuple, args, base: dict, tmp: Path) -> list[dict]:
    import vitq
    from vitq.eval.metrics import predict, top1
    from vitq.export.onnx_export import export_float_onnx, export_onnx
    from vitq.export.ort_runtime import OrtModel
    from vitq.export.packing import expected_packed_bytes

    model, calib, test, labels = loaded
    q = vitq.quantize(model, vitq.QuantConfig(method=args.method, w_bits=8, a_bits=8))
    t0 = time.perf_counter()
    vitq.calibrate(q, calib, progress=False)
    calib_seconds = time.perf_counter() - t0
    vitq.freeze(q)
    f_path, q_path = export_float_onnx(model, tmp / f"{name}-fp32.onnx"), export_onnx(q, tmp / f"{name}-int8.onnx")
    fp32, int8 = OrtModel(f_path, threads=args.threads), OrtModel(q_path, threads=args.threads)
    ort_logits = int8.predict(test, batch_size=32)
    sim_logits = predict(q, test, batch_size=32)
    common = {**base, "kind": "speed", "model": name, "method": args.method, "bits": 8, "w_bits": 8, "a_bits": 8,
              "mixed_precision": False, "num_calib": int(calib.shape[0]), "num_test": int(test.shape[0]),
              "calib_seconds": round(calib_seconds, 2), "activation_type": "u8",
              "agreement": (ort_logits.argmax(-1) == sim_logits.argmax(-1)).float().mean().item(),
              "max_abs_logit_diff": round((ort_logits - sim_logits).abs().max().item(), 5),
              "file_mb": round(q_path.stat().st_size / 1e6, 3), "fp32_file_mb": round(f_path.stat().st_size / 1e6, 3),
              "expected_mb": round(expected_packed_bytes(q)["total"] / 1e6, 3)}
    common["size_mb"] = common["file_mb"]
    if labels is not None:
        common.update(top1_ort_int8=top1(ort_logits, labels), top1_vitq_sim=top1(sim_logits, labels),
                      top1_float=top1(predict(model, test, batch_size=32), labels))
        common["top1"] = common["top1_ort_int8"]
    else:
        common.update(top1=None, top1_float=None)
    rows = []
    for batch in (32, 1):
        images = test if batch > 1 else test[: (8 if args.quick else 64)]
        t = time_interleaved(fp32, int8, images, batch, args.repeats)
        rows.append({**common, "batch": batch, "timed_images": int(images.shape[0]), "repeats": args.repeats, **t})
        print(f"{name} batch {batch}: fp32 {t['ort_fp32_img_s']} img/s, int8 {t['ort_int8_img_s']} img/s, "
              f"speedup {t['speedup']} (runs {t['speedup_runs']}), agreement {common['agreement']:.4f}", flush=True)
    return rows


def size_rows(name: str, loaded: tuple, base: dict, tmp: Path) -> list[dict]:
    import vitq
    from vitq.export.packing import PACKED_FILE, expected_packed_bytes, save_packed
    from vitq.nn.qops import quant_ops

    model = loaded[0]
    rows = []
    for bits in (8, 6, 4):
        q = vitq.quantize(model, vitq.QuantConfig(method="minmax", w_bits=bits, a_bits=bits))
        for op in quant_ops(q).values():  # MinMax weight intervals only: sizes do not depend on activations
            if op.has_weight:
                wq = op.quantizers()[1]
                wq.init_max(op.weight)
                wq.enabled = True
        save_packed(q, tmp / f"{name}-w{bits}")
        size = (tmp / f"{name}-w{bits}" / PACKED_FILE).stat().st_size
        exp = expected_packed_bytes(q)
        params = exp["params"]
        rows.append({**base, "kind": "size", "model": name, "method": "minmax", "bits": bits, "batch": None,
                     "quantized_params": params, "packed_mb": round(size / 1e6, 4),
                     "params_x_bits_mb": round(params * bits / 8 / 1e6, 4), "float_parts_mb": round(exp["float"] / 1e6, 4),
                     "expected_mb": round(exp["total"] / 1e6, 4), "packed_vs_expected": round(size / exp["total"], 5),
                     "float32_mb": round(sum(p.numel() for p in model.parameters()) * 4 / 1e6, 4)})
        print(f"{name} W{bits}: packed {size / 1e6:.3f} MB, params x bits / 8 + float parts "
              f"{exp['total'] / 1e6:.3f} MB ({100 * (size / exp['total'] - 1):+.2f}%)", flush=True)
    return rows


def merge(path: Path, rows: list[dict], meta: dict) -> None:
    from vitq.utils.atomic import atomic_write_text

    old = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    keys = {tuple(r.get(k) for k in KEY) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in KEY) not in keys]
    atomic_write_text(path, json.dumps({"rows": kept + rows, "meta": meta}, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--quick", action="store_true", help="few images, 2 repeats: for iteration, not for results")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timing runs (default 5, quick 2)")
    ap.add_argument("--method", default="minmax", choices=["minmax", "percentile", "liu2021", "mptq"],
                    help="calibration recipe of the int8 model (mptq: SQ-b + OPT-m, whose fc2 exports as two MatMuls)")
    ap.add_argument("--no-size", action="store_true", help="skip the packed-size rows")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    import onnxruntime

    torch.set_num_threads(args.threads)
    command = "python benchmarks/export_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            base = {"command": command.strip(), "threads": args.threads, "quick": args.quick,
                    "load_avg_1min": round(os.getloadavg()[0], 2), "ort_version": onnxruntime.__version__,
                    "torch": torch.__version__}
            loaded = load(name, args.quick)
            rows += speed_rows(name, loaded, args, base, Path(d))
            if not args.no_size:
                rows += size_rows(name, loaded, base, Path(d))
            merge(args.out, rows, {"cpu_count": os.cpu_count()})
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

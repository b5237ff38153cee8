"""ONNX Runtime speed and file size: vitq's QDQ export against ONNX Runtime's own ``quantize_static``
(MinMax calibrator, its defaults: U8S8, per-channel weights, QDQ) on the same float model, the same
calibration images, the same machine, timed alternately in one process (a ratio, since the machine is
shared). Both at W8A8. Rows go to ``benchmarks/results/export.json`` (``kind="peer_speed"``).

    python benchmarks/peer_speed.py --models dinov2-s14-fmnist fmnist-vit
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from export_speed import RESULTS, load, merge, time_interleaved  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dinov2-s14-fmnist", "fmnist-vit"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import vitq
    from vitq.export.onnx_export import export_float_onnx, export_onnx
    from vitq.export.ort_runtime import OrtModel
    from vitq.peers.ort_static import ort_quantize_static

    command = "python benchmarks/peer_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows = []
    for name in args.models:
        model, calib, test, _ = load(name, quick=False)
        images = test[: args.images]
        with tempfile.TemporaryDirectory() as d:
            q = vitq.quantize(model, vitq.QuantConfig(method="minmax", w_bits=8, a_bits=8))
            vitq.calibrate(q, calib, progress=False)
            vitq.freeze(q)
            ours = export_onnx(q, Path(d) / "vitq.onnx")
            f_path = export_float_onnx(model, Path(d) / "float.onnx")
            theirs = ort_quantize_static(f_path, Path(d) / "ort.onnx", calib, "minmax")
            t = time_interleaved(OrtModel(theirs, threads=args.threads), OrtModel(ours, threads=args.threads),
                                 images, 32, args.repeats)
            row = {"kind": "peer_speed", "model": name, "method": "minmax", "bits": 8, "batch": 32,
                   "threads": args.threads, "timed_images": int(images.shape[0]), "repeats": args.repeats,
                   "load_avg_1min": round(os.getloadavg()[0], 2), "command": command,
                   "ort_static_img_s": t["ort_fp32_img_s"], "vitq_qdq_img_s": t["ort_int8_img_s"],
                   "vitq_over_ort_static": t["speedup"], "ratio_runs": t["speedup_runs"],
                   "vitq_file_mb": round(ours.stat().st_size / 1e6, 3),
                   "ort_static_file_mb": round(theirs.stat().st_size / 1e6, 3)}
        rows.append(row)
        print(f"{name}: ORT quantize_static {row['ort_static_img_s']} img/s, {row['ort_static_file_mb']} MB; vitq QDQ "
              f"{row['vitq_qdq_img_s']} img/s, {row['vitq_file_mb']} MB; vitq / ORT {row['vitq_over_ort_static']}",
              flush=True)
    merge(RESULTS, rows, meta={"cpu_count": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

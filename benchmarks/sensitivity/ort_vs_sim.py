"""Is ONNX Runtime's disagreement with the simulation at W4A4 on DINOv2 numerical sensitivity, or an export
bug? Calibrates ``liu2021-rot-recon`` (seed 0), saves it to /tmp/diag-wBITS, and compares on 1,000
``fmnist:test`` images the argmax of: ORT's QDQ model, the simulation at batch 8, the simulation on images
perturbed by 1e-6 relative noise, each against the simulation at batch 32. Writes /tmp/diag-wBITS.json;
``perturb_every_operand.py`` continues. Results: ``benchmarks/results/lowbit/export_sensitivity.json``.

    python benchmarks/sensitivity/ort_vs_sim.py BITS RECON_ITERS NUM_CALIB     # run: 4 100 256
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import vitq
from vitq.bench.runner import BENCH_MODELS
from vitq.data.sources import load_images
from vitq.eval.metrics import agreement, predict, top1
from vitq.export.onnx_export import export_onnx
from vitq.export.ort_runtime import OrtModel
from vitq.export.serialization import save_quantized
from vitq.models.loading import create_model, model_data_config

torch.set_num_threads(2)
bits, iters, ncal = (int(x) for x in sys.argv[1:4])
bm = BENCH_MODELS["dinov2-s14-fmnist"]
model = create_model(bm.spec)
dc = model_data_config(model)
test = load_images("fmnist:test", dc, num=1000, seed=0)
calib = load_images(bm.calib, dc, num=ncal, seed=0)
cfg = vitq.QuantConfig(w_bits=bits, a_bits=bits, method="liu2021-rot-recon", seed=0, search_images=32,
                       recon_iters=iters)
t0 = time.time()
q = vitq.pipeline(model, cfg, calib.images, progress=False).model
print("calib", time.time() - t0, flush=True)
save_quantized(q, f"/tmp/diag-w{bits}", overwrite=True)
sim = predict(q, test.images, batch_size=32)
sim8 = predict(q, test.images, batch_size=8)
g = torch.Generator().manual_seed(0)
simp = predict(q, test.images * (1 + 1e-6 * torch.randn(test.images.shape, generator=g)), batch_size=32)
with tempfile.TemporaryDirectory() as d:
    ort = OrtModel(export_onnx(q, Path(d) / "m.onnx"), threads=2).predict(test.images, batch_size=32)
res = {"bits": bits, "recon_iters": iters, "num_calib": ncal, "num_test": 1000,
       "top1_sim": top1(sim, test.labels), "top1_ort": top1(ort, test.labels),
       "agree_sim_ort": agreement(ort, sim), "agree_sim_batch8": agreement(sim8, sim),
       "agree_sim_perturbed_1e-6": agreement(simp, sim),
       "max_abs_logit_diff_ort": (ort - sim).abs().max().item(),
       "max_abs_logit_diff_batch8": (sim8 - sim).abs().max().item(), "load": os.getloadavg()[0]}
print(json.dumps(res), flush=True)
Path(f"/tmp/diag-w{bits}.json").write_text(json.dumps(res))

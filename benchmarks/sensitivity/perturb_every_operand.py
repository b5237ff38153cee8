"""After ``ort_vs_sim.py 4 ...``: the saved W4A4 model's simulation with every quantized activation operand
multiplied by (1 + eps * N(0, 1)) (seeded), eps = 1e-7 and 1e-6, against the unperturbed simulation on the
same 1,000 images: how far float-rounding-sized differences alone move the argmax. Writes /tmp/diag2.json.

    python benchmarks/sensitivity/perturb_every_operand.py
"""

import json
from pathlib import Path

import torch

from vitq.bench.runner import BENCH_MODELS
from vitq.data.sources import load_images
from vitq.eval.metrics import agreement, predict
from vitq.export.packing import load_saved
from vitq.models.loading import create_model, model_data_config
from vitq.nn.qops import quant_ops

torch.set_num_threads(1)
bm = BENCH_MODELS["dinov2-s14-fmnist"]
model = create_model(bm.spec)
dc = model_data_config(model)
test = load_images("fmnist:test", dc, num=1000, seed=0)
q = load_saved("/tmp/diag-w4", model)
sim = predict(q, test.images, batch_size=32)
g = torch.Generator().manual_seed(1)
res = {}
for eps in (1e-7, 1e-6):
    def jitter(mod, args, e=eps):
        return (args[0] * (1 + e * torch.randn(args[0].shape, generator=g)),) + tuple(args[1:])

    hooks = []
    for op in quant_ops(q).values():
        qa, qb = op.quantizers()
        for m in (qa,) + (() if op.has_weight else (qb,)):
            hooks.append(m.register_forward_pre_hook(jitter))
    p = predict(q, test.images, batch_size=32)
    for h in hooks:
        h.remove()
    res[f"agree_sim_every_operand_perturbed_{eps:g}"] = agreement(p, sim)
    print(eps, res, flush=True)
Path("/tmp/diag2.json").write_text(json.dumps(res))

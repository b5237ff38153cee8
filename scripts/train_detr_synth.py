#!/usr/bin/env python
"""Train the "detr-synth" zoo model: a small HF DETR on the synthetic Fashion-MNIST detection set, on the CPU.

Training canvases are drawn on the fly (seeded) from Fashion-MNIST train images 0..49,999; the val split
(train images 50,000..59,999) picks the checkpoint, the test split (the 10,000 test images) is evaluated
once at the end with COCOeval. The run is bounded by wall-clock time (``--budget-min``): the cosine learning-rate schedule runs
on elapsed time, so it anneals fully inside the budget however the step time varies on a shared CPU. The best validation checkpoint (EMA or raw weights, whichever scores
higher) is written as float16 ``model.safetensors`` + ``config.json`` + ``train_log.txt`` in ``--out``
(default ``src/vitq/assets/detr_synth``) each time it improves.

    nice -n 15 python scripts/train_detr_synth.py                     # the committed model (75 min)
    python scripts/train_detr_synth.py --bench-steps 5                # time a few steps, write nothing
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from vitq.data.synth_detection import SynthSpec, draw_canvas, split_pool, synth_split_dir  # noqa: E402
from vitq.eval.detection import coco_map, detr_detections  # noqa: E402
from vitq.models.detr_synth import ASSET_DIR, SYNTH_MEAN, SYNTH_STD, build_detr_synth  # noqa: E402

ARCH = {
    "in_chans": 1, "image_size": 128, "widths": [32, 64, 128], "depth": 2,
    "d_model": 128, "encoder_layers": 3, "decoder_layers": 3, "heads": 8, "ffn_dim": 512,
    "num_queries": 20, "num_labels": 10, "dropout": 0.0, "eos_coefficient": 0.1,
}


class Log:
    def __init__(self, path: Path | None):
        self.f = open(path, "a") if path else None  # noqa: SIM115

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        if self.f:
            self.f.write(msg + "\n")
            self.f.flush()


def normalize(u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(u8).float().div_(255.0)[:, None]
    return (x - SYNTH_MEAN[0]) / SYNTH_STD[0]


def train_batch(rng, pool, spec, n):
    imgs, targets = [], []
    c = spec.canvas
    for _ in range(n):
        img, objs = draw_canvas(rng, pool[0], pool[1], spec)
        imgs.append(img)
        boxes = torch.tensor([[(x + w / 2) / c, (y + h / 2) / c, w / c, h / c] for (x, y, w, h), _ in objs],
                             dtype=torch.float32).reshape(-1, 4)
        targets.append({"class_labels": torch.tensor([lbl for _, lbl in objs], dtype=torch.long), "boxes": boxes})
    return normalize(np.stack(imgs)), targets


def load_split(folder: Path):
    from PIL import Image

    coco = json.loads((folder / "instances.json").read_text())
    imgs = np.stack([np.asarray(Image.open(folder / "images" / im["file_name"]).convert("L"))
                     for im in coco["images"]])
    return normalize(imgs), coco


@torch.no_grad()
def evaluate(model, images, coco, batch=50) -> dict:
    model.eval()
    dets = []
    ids = [im["id"] for im in coco["images"]]
    sizes = [(im["height"], im["width"]) for im in coco["images"]]
    cats = [c["id"] for c in coco["categories"]]
    for i in range(0, len(images), batch):
        out = model(pixel_values=images[i:i + batch])
        dets += detr_detections(out.logits, out.pred_boxes, ids[i:i + batch], sizes[i:i + batch], cats)
    model.train()
    m = coco_map(coco, dets)
    return {"map": m.map, "map50": m.map50, "map75": m.stats["map75"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSET_DIR)
    p.add_argument("--budget-min", type=float, default=75.0, help="hard wall-clock budget, minutes")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-backbone", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--eval-every-min", type=float, default=7.0)
    p.add_argument("--val-num", type=int, default=300)
    p.add_argument("--test-num", type=int, default=1000)
    p.add_argument("--reserve-s", type=float, default=240.0,
                   help="seconds of the budget kept for the final test evaluation and writing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench-steps", type=int, default=0, help="time this many steps and exit, writing nothing")
    args = p.parse_args()

    t_start = time.time()
    budget_s = args.budget_min * 60
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    spec = SynthSpec()
    model = build_detr_synth(ARCH)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    pool = split_pool("train")

    backbone = [p for n, p in model.named_parameters() if n.startswith("model.backbone.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.backbone.")]
    opt = torch.optim.AdamW([{"params": backbone, "lr": args.lr_backbone}, {"params": rest, "lr": args.lr}],
                            weight_decay=args.weight_decay)
    base_lrs = [args.lr_backbone, args.lr]

    if args.bench_steps:
        for s in range(args.bench_steps + 1):
            if s == 1:
                t0 = time.time()
            x, y = train_batch(rng, pool, spec, args.batch)
            loss = model(pixel_values=x, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = (time.time() - t0) / args.bench_steps
        print(f"params {n_params}  {dt:.3f} s/step at batch {args.batch} ({args.batch / dt:.1f} img/s), loss {loss:.3f}")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "train_log.txt")
    log(f"detr-synth: arch {json.dumps(ARCH)} params={n_params} batch={args.batch} lr={args.lr} "
        f"lr_backbone={args.lr_backbone} wd={args.weight_decay} ema={args.ema} budget={args.budget_min}min "
        f"seed={args.seed} threads={args.threads} torch={torch.__version__} transformers={transformers.__version__}")
    val_images, val_coco = load_split(synth_split_dir("val", args.val_num, seed=args.seed))
    ema = copy.deepcopy(model).eval()
    for q in ema.parameters():
        q.requires_grad_(False)

    step, best, history = 0, {"map": -1.0}, []
    # The schedule runs on wall-clock time, not steps: on a CPU shared with other jobs the step time varies
    # several-fold, and a step-count schedule fixed in advance would stop before annealing.
    t_train = time.time()
    train_s = budget_s - (t_train - t_start) - args.reserve_s
    last_eval = time.time()
    eval_cost = 0.0
    loss_avg = None
    while True:
        progress = (time.time() - t_train) / train_s
        if progress >= 1.0:
            break
        f = min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * max(f, 0.01)
        x, y = train_batch(rng, pool, spec, args.batch)
        out = model(pixel_values=x, labels=y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        step += 1
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        loss_avg = out.loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * out.loss.item()
        if step % 100 == 0:
            ld = {k: round(out.loss_dict[k].item(), 3) for k in ("loss_ce", "loss_bbox", "loss_giou") if k in out.loss_dict}
            log(f"step {step} ({100 * progress:.0f}% of the time) loss {loss_avg:.3f} {ld} lr {opt.param_groups[1]['lr']:.2e} "
                f"elapsed {time.time() - t_start:.0f}s")
        done = (time.time() - t_train) >= train_s
        if time.time() - last_eval > args.eval_every_min * 60 or done:
            t0 = time.time()
            for tag, m in (("raw", model), ("ema", ema)):
                r = evaluate(m, val_images, val_coco)
                history.append({"step": step, "weights": tag, **r})
                log(f"eval step {step} {tag}: val mAP {r['map']:.4f} mAP50 {r['map50']:.4f} mAP75 {r['map75']:.4f}")
                if r["map"] > best["map"]:
                    best = {"step": step, "weights": tag, **r}
                    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
                             for k, v in m.state_dict().items()}
                    safetensors.torch.save_file(state, str(args.out / "model.safetensors"))
                    log(f"  saved best ({tag}, step {step})")
            eval_cost = time.time() - t0
            last_eval = time.time()
    log(f"training done: {step} steps in {time.time() - t_start:.0f}s; best val {best}; last eval took {eval_cost:.0f}s")

    # Final: the saved (float16) best checkpoint, reloaded as the zoo loads it, on the test split.
    best_model = build_detr_synth(ARCH)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in safetensors.torch.load_file(str(args.out / "model.safetensors")).items()}
    best_model.load_state_dict(state, strict=True)
    test_dir = synth_split_dir("test", args.test_num, seed=args.seed)
    test_images, test_coco = load_split(test_dir)
    r = evaluate(best_model.eval(), test_images, test_coco)
    log(f"test ({args.test_num} canvases, {len(test_coco['annotations'])} objects): mAP {r['map']:.4f} "
        f"mAP50 {r['map50']:.4f} mAP75 {r['map75']:.4f}")
    config = {
        "name": "detr-synth", "architecture": "transformers DetrForObjectDetection + vitq SynthBackbone",
        "arch": ARCH, "num_params": n_params, "spec": spec.__dict__,
        "dataset": "synthetic Fashion-MNIST detection (vitq.data.synth_detection), train drawn on the fly",
        "seed": args.seed, "steps": step, "batch_size": args.batch,
        "optimizer": {"name": "AdamW", "lr": args.lr, "lr_backbone": args.lr_backbone,
                      "weight_decay": args.weight_decay, "warmup_steps": args.warmup, "schedule": "cosine",
                      "grad_clip": 0.1, "ema": args.ema},
        "best_val": best, "val_num": args.val_num, "val_history": history,
        "test_num": args.test_num, "test_map": round(r["map"], 4), "test_map50": round(r["map50"], 4),
        "test_map75": round(r["map75"], 4), "saved_dtype": "float16",
        "train_wall_seconds": round(time.time() - t_start, 1), "threads": args.threads,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

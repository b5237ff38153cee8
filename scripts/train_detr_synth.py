#!/usr/bin/env python
"""Train the "detr-synth" zoo model: a small HF DETR on the synthetic Fashion-MNIST detection set, on the CPU.

Training canvases are drawn on the fly (seeded) from Fashion-MNIST train images 0..49,999; the val split
(train images 50,000..59,999) picks the checkpoint, the test split (the 10,000 test images) is evaluated
once at the end with COCOeval. Before DETR training, the CNN backbone is pretrained for ``--pretrain-min``
minutes on a dense task on the same canvases (per cell of its stride-16 feature map: the class of the object
covering the cell centre, or background, and the distances to that object's four sides), the stand-in for the
ImageNet-pretrained backbone real DETR starts from; without it DETR's set matching learns slowly from a random
backbone (0.07 test mAP after 64 minutes). With ``--freeze-backbone`` the pretrained backbone then stays fixed
and the transformer trains on its cached feature maps (``--cache-canvases``, a few redrawn every step), 2.4x
the steps per minute of training the whole model. The run is bounded by wall-clock time (``--budget-min``): the cosine learning-rate schedule runs
on elapsed time, so it anneals fully inside the budget however the step time varies on a shared CPU. The best validation checkpoint (EMA or raw weights, whichever scores
higher) is written as float16 ``model.safetensors`` + ``config.json`` + ``train_log.txt`` in ``--out``
(default ``src/vitq/assets/detr_synth``) each time it improves.

``--init-from DIR`` continues an earlier run's model (its config and log are kept in the new ones); the committed
model is two runs: 90 minutes with the backbone frozen, then 70 minutes of the whole model, backbone included,
at half the learning rates:

    python scripts/train_detr_synth.py --budget-min 90 --threads 2 --pretrain-min 10 --freeze-backbone \
        --cache-canvases 16000 --out /tmp/detr_init                  # stage 1 (90 min)
    python scripts/train_detr_synth.py --init-from /tmp/detr_init --budget-min 70 --threads 2 --pretrain-min 0 \
        --lr 1e-4 --lr-backbone 5e-5 --val-num 500 --out /tmp/detr_ft   # stage 2 (70 min), then copied here
    python scripts/train_detr_synth.py --bench-steps 5                # time a few steps, write nothing
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
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


def draw_batch(rng, pool, spec, n):
    """``n`` canvases: uint8 images ``(n, canvas, canvas)`` and per canvas its objects ``([x, y, w, h], label)``."""
    drawn = [draw_canvas(rng, pool[0], pool[1], spec) for _ in range(n)]
    return np.stack([img for img, _ in drawn]), [objs for _, objs in drawn]


def train_batch(rng, pool, spec, n):
    """``n`` normalised canvases and their DETR targets (labels; boxes as centre x, y, w, h in canvas units)."""
    imgs, objs_per_image = draw_batch(rng, pool, spec, n)
    c = spec.canvas
    targets = [{"class_labels": torch.tensor([lbl for _, lbl in objs], dtype=torch.long),
                "boxes": torch.tensor([[(x + w / 2) / c, (y + h / 2) / c, w / c, h / c] for (x, y, w, h), _ in objs],
                                      dtype=torch.float32).reshape(-1, 4)}
               for objs in objs_per_image]
    return normalize(imgs), targets


def load_weights(path: Path) -> dict:
    """A saved (float16) checkpoint as float32 tensors, as the zoo loads it."""
    return {k: v.float() if v.is_floating_point() else v for k, v in safetensors.torch.load_file(str(path)).items()}


def load_split(folder: Path):
    from PIL import Image

    coco = json.loads((folder / "instances.json").read_text())
    imgs = np.stack([np.asarray(Image.open(folder / "images" / im["file_name"]).convert("L"))
                     for im in coco["images"]])
    return normalize(imgs), coco


def dense_targets(objs_per_image, canvas: int, grid: int):
    """Per cell of a ``grid x grid`` map: the class of the object whose box holds the cell centre (the
    smallest such box; the cell holding a box's centre always belongs to it), ``-1`` for background, and the
    distances (left, top, right, bottom) from the cell centre to that box's sides, in canvas units."""
    n = len(objs_per_image)
    cls = torch.full((n, grid, grid), -1, dtype=torch.long)
    ltrb = torch.zeros(n, 4, grid, grid)
    stride = canvas / grid
    centres = (torch.arange(grid) + 0.5) * stride
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    for i, objs in enumerate(objs_per_image):
        for (x, y, w, h), lbl in sorted(objs, key=lambda o: -o[0][2] * o[0][3]):
            inside = (cx >= x) & (cx <= x + w) & (cy >= y) & (cy <= y + h)
            inside[min(int((y + h / 2) // stride), grid - 1), min(int((x + w / 2) // stride), grid - 1)] = True
            cls[i][inside] = lbl
            for k, d in enumerate((cx - x, cy - y, x + w - cx, y + h - cy)):
                ltrb[i, k][inside] = d[inside] / canvas
    return cls, ltrb


def pretrain_backbone(backbone, rng, pool, spec, *, minutes: float, batch: int, lr: float, num_labels: int,
                      log) -> dict:
    """Dense class + box-side pretraining of ``backbone`` (in place) for ``minutes`` of wall-clock time,
    cosine-annealed; returns the last running losses and the cell accuracy on object cells."""
    channels = backbone.channels[-1]
    head = torch.nn.Conv2d(channels, num_labels + 1 + 4, 1)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    backbone.train()
    t0, step, avg = time.time(), 0, {}
    budget = minutes * 60
    weight = torch.ones(num_labels + 1)
    weight[num_labels] = 0.25  # background holds most cells
    while (progress := (time.time() - t0) / budget) < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * max(0.5 * (1 + math.cos(math.pi * progress)), 0.01)
        imgs, objs = draw_batch(rng, pool, spec, batch)
        out = head(backbone(normalize(imgs))[0])
        grid = out.shape[-1]
        cls, ltrb = dense_targets(objs, spec.canvas, grid)
        target = torch.where(cls < 0, num_labels, cls)
        loss_cls = torch.nn.functional.cross_entropy(out[:, :num_labels + 1], target, weight=weight)
        pos = (cls >= 0).unsqueeze(1).expand(-1, 4, -1, -1)
        loss_box = torch.nn.functional.l1_loss(out[:, num_labels + 1:].sigmoid()[pos], ltrb[pos])
        loss = loss_cls + 5 * loss_box
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            acc = (out[:, :num_labels].argmax(1)[cls >= 0] == cls[cls >= 0]).float().mean().item()
        for k, v in (("cls", loss_cls.item()), ("box", loss_box.item()), ("acc", acc)):
            avg[k] = v if k not in avg else 0.98 * avg[k] + 0.02 * v
        if step % 100 == 0:
            log(f"pretrain step {step} ({100 * progress:.0f}%) cls {avg['cls']:.3f} box {avg['box']:.4f} "
                f"object-cell acc {avg['acc']:.3f} elapsed {time.time() - t0:.0f}s")
    log(f"pretraining done: {step} steps in {time.time() - t0:.0f}s, batch {batch}: {json.dumps(avg)}")
    return {"steps": step, "batch": batch, "lr": lr, "minutes": minutes, **{k: round(v, 4) for k, v in avg.items()}}


class FeatureFeeder(torch.nn.Module):
    """Stands in for the frozen backbone while the transformer trains: returns the feature maps set on it
    (computed ahead, once per canvas), in the form HF's ``DetrConvEncoder`` takes from its backbone."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.channels = channels
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.features]


class FeatureCache:
    """Backbone feature maps (float16) and targets of ``size`` canvases; ``refresh(k)`` redraws the ``k``
    oldest, so that over a run the transformer sees far more canvases than the cache holds."""

    def __init__(self, backbone, rng, pool, spec, size: int, batch: int = 64):
        self.backbone, self.rng, self.pool, self.spec = backbone, rng, pool, spec
        self.features, self.targets, self.next = None, [None] * size, 0
        for i in range(0, size, batch):
            self._draw(i, min(batch, size - i))
        self.next = 0

    @torch.no_grad()
    def _draw(self, start: int, n: int) -> None:
        x, y = train_batch(self.rng, self.pool, self.spec, n)
        f = self.backbone(x)[0].half()
        if self.features is None:
            self.features = torch.empty(len(self.targets), *f.shape[1:], dtype=torch.float16)
        self.features[start:start + n] = f
        self.targets[start:start + n] = y

    def refresh(self, k: int) -> None:
        k = min(k, len(self.targets) - self.next)
        if k > 0:
            self._draw(self.next, k)
        self.next = (self.next + k) % len(self.targets)

    def batch(self, n: int):
        idx = self.rng.choice(len(self.targets), size=n, replace=False)
        return self.features[idx].float(), [self.targets[i] for i in idx]


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
    p.add_argument("--lr-backbone", type=float, default=1e-4)
    p.add_argument("--pretrain-min", type=float, default=10.0,
                   help="minutes of dense backbone pretraining before DETR training (part of the budget; 0: none)")
    p.add_argument("--pretrain-batch", type=int, default=32)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--init-from", type=Path, default=None,
                   help="a folder with a model.safetensors (+ config.json, train_log.txt) of an earlier run to continue "
                        "from: no backbone pretraining; the earlier run's config and log are kept in the new ones")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="after pretraining, keep the backbone fixed and train the transformer on its cached features")
    p.add_argument("--cache-canvases", type=int, default=20000, help="--freeze-backbone: canvases in the cache")
    p.add_argument("--cache-refresh", type=int, default=4, help="--freeze-backbone: canvases redrawn per step")
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

    if args.init_from is not None:
        if not (args.init_from / "model.safetensors").is_file():
            p.error(f"--init-from {args.init_from}: no model.safetensors there")
        if args.pretrain_min > 0:
            p.error("--init-from continues a trained model: pass --pretrain-min 0")
        if args.init_from.resolve() == args.out.resolve():
            p.error("--init-from and --out are the same folder: the run would overwrite what it starts from")
    t_start = time.time()
    budget_s = args.budget_min * 60
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    spec = SynthSpec()
    model = build_detr_synth(ARCH)
    earlier = None
    if args.init_from is not None:
        model.load_state_dict(load_weights(args.init_from / "model.safetensors"), strict=True)
        cfg = args.init_from / "config.json"
        earlier = json.loads(cfg.read_text()) if cfg.is_file() else {"path": str(args.init_from)}
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
    (args.out / "train_log.txt").unlink(missing_ok=True)
    log = Log(args.out / "train_log.txt")
    earlier_log = args.init_from / "train_log.txt" if args.init_from is not None else None
    if earlier_log is not None and earlier_log.is_file():
        log("=== the run this one continues from (--init-from) ===\n" + earlier_log.read_text().rstrip()
            + "\n=== this run ===")
    log(f"detr-synth: arch {json.dumps(ARCH)} params={n_params} batch={args.batch} lr={args.lr} "
        f"lr_backbone={args.lr_backbone} pretrain={args.pretrain_min}min@{args.pretrain_lr} wd={args.weight_decay} ema={args.ema} budget={args.budget_min}min "
        f"seed={args.seed} threads={args.threads} torch={torch.__version__} transformers={transformers.__version__}")
    val_images, val_coco = load_split(synth_split_dir("val", args.val_num, seed=args.seed))
    pretrain = None
    if args.pretrain_min > 0:
        pretrain = pretrain_backbone(model.model.backbone.model, rng, pool, spec, minutes=args.pretrain_min,
                                     batch=args.pretrain_batch, lr=args.pretrain_lr, num_labels=ARCH["num_labels"],
                                     log=log)
    ema = copy.deepcopy(model).eval()
    for q in ema.parameters():
        q.requires_grad_(False)
    conv_encoder = model.model.backbone
    backbone = conv_encoder.model
    cache = feeder = None
    if args.freeze_backbone:
        backbone.eval().requires_grad_(False)
        t0 = time.time()
        cache = FeatureCache(backbone, rng, pool, spec, args.cache_canvases)
        feeder = FeatureFeeder(backbone.channels)
        log(f"backbone frozen; feature cache of {args.cache_canvases} canvases in {time.time() - t0:.0f}s, "
            f"{args.cache_refresh} redrawn per step")

    @contextlib.contextmanager
    def real_backbone():  # the model with its own backbone (evaluation, saving), not the feeder
        conv_encoder.model = backbone
        try:
            yield
        finally:
            if feeder is not None:
                conv_encoder.model = feeder

    if feeder is not None:
        conv_encoder.model = feeder
    # EMA pairs by name: with --freeze-backbone the feeder stands where the (fixed) backbone was, so the
    # backbone's tensors have no partner in the training model and stay as pretrained in the EMA copy
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    ema_params = [(pe, params[n]) for n, pe in ema.named_parameters() if n in params]
    ema_buffers = [(be, buffers[n]) for n, be in ema.named_buffers() if n in buffers]

    step, best, history = 0, {"map": -1.0}, []
    # The schedule runs on wall-clock time, not steps: on a CPU shared with other jobs the step time varies
    # several-fold, and a step-count schedule fixed in advance would stop before annealing.
    t_train = time.time()
    train_s = budget_s - (t_train - t_start) - args.reserve_s
    # continuing a trained model: evaluate it after the first step, so the run keeps what it started from
    # unless it beats it on val
    last_eval = -math.inf if args.init_from is not None else time.time()
    eval_cost = 0.0
    loss_avg = None
    while True:
        progress = (time.time() - t_train) / train_s
        if progress >= 1.0:
            break
        f = min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * max(f, 0.01)
        if cache is not None:
            cache.refresh(args.cache_refresh)
            feeder.features, y = cache.batch(args.batch)
            x = torch.zeros(args.batch, 1, *feeder.features.shape[-2:])  # only its shape is read (the mask)
        else:
            x, y = train_batch(rng, pool, spec, args.batch)
        out = model(pixel_values=x, labels=y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        step += 1
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in ema_params:
                pe.lerp_(pm, 1 - d)
            for be, bm in ema_buffers:
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
                with real_backbone():
                    r = evaluate(m, val_images, val_coco)
                history.append({"step": step, "weights": tag, **r})
                log(f"eval step {step} {tag}: val mAP {r['map']:.4f} mAP50 {r['map50']:.4f} mAP75 {r['map75']:.4f}")
                if r["map"] > best["map"]:
                    best = {"step": step, "weights": tag, **r}
                    with real_backbone():
                        state = {k: (v.half() if v.is_floating_point() else v).contiguous()
                                 for k, v in m.state_dict().items()}
                    safetensors.torch.save_file(state, str(args.out / "model.safetensors"))
                    log(f"  saved best ({tag}, step {step})")
            eval_cost = time.time() - t0
            last_eval = time.time()
    log(f"training done: {step} steps in {time.time() - t_start:.0f}s; best val {best}; last eval took {eval_cost:.0f}s")

    # Final: the saved (float16) best checkpoint, reloaded as the zoo loads it, on the test split.
    best_model = build_detr_synth(ARCH)
    best_model.load_state_dict(load_weights(args.out / "model.safetensors"), strict=True)
    test_dir = synth_split_dir("test", args.test_num, seed=args.seed)
    test_images, test_coco = load_split(test_dir)
    r = evaluate(best_model.eval(), test_images, test_coco)
    log(f"test ({args.test_num} canvases, {len(test_coco['annotations'])} objects): mAP {r['map']:.4f} "
        f"mAP50 {r['map50']:.4f} mAP75 {r['map75']:.4f}")
    config = {
        "name": "detr-synth", "command": " ".join(["python", *sys.argv]), "architecture": "transformers DetrForObjectDetection + vitq SynthBackbone",
        "arch": ARCH, "num_params": n_params, "spec": spec.__dict__,
        "dataset": "synthetic Fashion-MNIST detection (vitq.data.synth_detection), train drawn on the fly",
        "seed": args.seed, "init_from": earlier, "backbone_pretraining": pretrain, "backbone_frozen": args.freeze_backbone,
        "cache_canvases": args.cache_canvases if args.freeze_backbone else None, "steps": step, "batch_size": args.batch,
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

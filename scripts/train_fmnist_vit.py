#!/usr/bin/env python
"""Train the "fmnist-vit" zoo model: a small timm VisionTransformer on Fashion-MNIST, on the CPU.

Reproducible: fixed seed, a seeded generator for the data order and augmentation, and a fixed thread
count. Writes ``model.safetensors``, ``config.json`` and ``train_log.txt`` into ``--out``
(default: ``src/vitq/assets/fmnist_vit``).

    python scripts/train_fmnist_vit.py                       # the committed model
    python scripts/train_fmnist_vit.py --bench-steps 10      # time a few steps, write nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# On a CPU shared with other jobs, OpenMP threads that spin while waiting at barriers steal time slices
# from each other and from the other jobs (measured here: 4.8x slower steps under load). Passive waiting
# must be chosen before torch starts its thread pool, hence before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from vitq.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "vitq" / "assets" / "fmnist_vit"


def build_model(model_kwargs: dict) -> VisionTransformer:
    return VisionTransformer(**model_kwargs)


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float().div_(255.0) - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


def augment(
    padded: torch.Tensor, idx: torch.Tensor, pad: int, gen: torch.Generator, flip_p: float = 0.5
) -> torch.Tensor:
    """Random crop (from the pre-padded images) plus horizontal flip, vectorised over the batch."""
    b = idx.numel()
    size = padded.shape[-1] - 2 * pad
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < flip_p
    ar = torch.arange(size)
    rows = (oy[:, None] + ar)[:, :, None]  # (B, size, 1)
    cols = ox[:, None] + ar  # (B, size)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, :]  # (B, 1, size)
    crop = padded[idx[:, None, None], 0, rows, cols]  # (B, size, size)
    return crop.unsqueeze(1)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch):
        logits = model(normalise(images[i : i + batch]))
        correct += (logits.argmax(-1) == labels[i : i + batch]).sum().item()
    return correct / images.shape[0]


def lr_at(step: int, total: int, warmup: int, base: float, final: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--data-root", type=Path, default=None, help="Fashion-MNIST IDX directory (default: Debian path)"
    )
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--pad", type=int, default=0, help="random-crop padding in pixels (0: no crop)")
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flip"
    )
    p.add_argument(
        "--ema-decay", type=float, default=0.999, help="keep an EMA of the weights and save it (0: off)"
    )
    p.add_argument("--eval-every", type=int, default=4, help="evaluate on the test set every N epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-steps", type=int, default=0, help="only time this many training steps")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_kwargs = dict(
        img_size=28,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
    )
    model = build_model(model_kwargs)
    n_params = sum(t.numel() for t in model.parameters())

    train_x, train_y = load_fashion_mnist("train", args.data_root)
    test_x, test_y = load_fashion_mnist("test", args.data_root)
    padded = F.pad(train_x, (args.pad,) * 4) if args.pad else train_x
    n = train_x.shape[0]
    steps_per_epoch = n // args.batch_size  # drop the last partial batch: every step sees a full batch
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)

    # No weight decay on biases, norms, position embeddings and the class token (the usual ViT recipe).
    decay = [t for name, t in model.named_parameters() if t.ndim >= 2 and "pos_embed" not in name]
    no_decay = [t for name, t in model.named_parameters() if t.ndim < 2 or "pos_embed" in name]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    gen = torch.Generator().manual_seed(args.seed)
    ema = None
    if args.ema_decay > 0:
        ema = build_model(model_kwargs)
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        # Float tensors only (params and float buffers), matched by name.
        live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        ema_sd = ema.state_dict()
        live_tensors = list(live.values())
        ema_tensors = [ema_sd[k] for k in live]

    log_lines: list[str] = []
    if not args.bench_steps:
        args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)
        if not args.bench_steps:
            (args.out / "train_log.txt").write_text("\n".join(log_lines) + "\n")

    log(
        f"fmnist-vit: {json.dumps(model_kwargs)} params={n_params} epochs={args.epochs} batch={args.batch_size} "
        f"lr={args.lr} wd={args.weight_decay} ls={args.label_smoothing} seed={args.seed} threads={args.threads} "
        f"torch={torch.__version__} timm={timm.__version__}"
    )

    step = 0
    t_start = time.perf_counter()
    # CPU seconds of this process: on a shared machine wall time includes waiting for other jobs.
    cpu_start = time.process_time()
    final_acc = float("nan")
    for epoch in range(args.epochs):
        model.train()
        t_ep = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x = augment(padded, idx, args.pad, gen, 0.5 if args.flip else 0.0)
            y = train_y[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, args.lr, args.min_lr)
            logits = model(normalise(x))
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                # Warm the decay up so the average is not dominated by the random initialisation.
                d = min(args.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_tensors, live_tensors, 1.0 - d)
            step += 1
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(-1) == y).sum().item()
            seen += y.numel()
            if args.bench_steps and step == 3:
                t_bench = time.perf_counter()
            if args.bench_steps and step == 3 + args.bench_steps:
                dt = (time.perf_counter() - t_bench) / args.bench_steps
                print(
                    f"params={n_params} {dt * 1000:.0f} ms/step, {dt * steps_per_epoch / 60:.2f} min/epoch, "
                    f"{dt * total_steps / 60:.1f} min for {args.epochs} epochs"
                )
                return 0
        ep_time = time.perf_counter() - t_ep
        last = epoch == args.epochs - 1
        msg = (
            f"epoch {epoch + 1:3d}/{args.epochs} loss {loss_sum / seen:.4f} train_top1 {correct / seen:.4f} "
            f"lr {opt.param_groups[0]['lr']:.2e} time {ep_time:.1f}s elapsed {time.perf_counter() - t_start:.0f}s"
        )
        if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            final_acc = evaluate(model, test_x, test_y)
            msg += f" test_top1 {final_acc:.4f}"
            if ema is not None:
                raw_acc, final_acc = final_acc, evaluate(ema, test_x, test_y)
                msg += f" ema_test_top1 {final_acc:.4f}"
        log(msg)
    wall = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    log(
        f"done: test_top1 {final_acc:.4f} wall {wall:.0f}s ({wall / 60:.1f} min) cpu {cpu:.0f}s "
        f"on {args.threads} threads"
    )

    saved = model if ema is None else ema
    saved.eval()
    state = {k: v.detach().contiguous() for k, v in saved.state_dict().items()}
    safetensors.torch.save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "name": "fmnist-vit",
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "model_kwargs": model_kwargs,
        "num_params": n_params,
        "normalization": {"mean": list(FASHION_MNIST_MEAN), "std": list(FASHION_MNIST_STD)},
        "dataset": f"Fashion-MNIST (train {n:,} / test {test_x.shape[0]:,})",
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": {
            "name": "AdamW",
            "lr": args.lr,
            "min_lr": args.min_lr,
            "warmup_epochs": args.warmup_epochs,
            "schedule": "linear warmup + cosine",
            "weight_decay": args.weight_decay,
        },
        "label_smoothing": args.label_smoothing,
        "augmentation": (f"random crop 28 from {args.pad}-px zero padding" if args.pad else "no crop")
        + (" + horizontal flip" if args.flip else ""),
        "ema_decay": args.ema_decay,
        "saved_weights": "EMA" if ema is not None else "final",
        "test_top1": round(final_acc, 4),
        **({"test_top1_without_ema": round(raw_acc, 4)} if ema is not None else {}),
        "train_wall_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "python_version": platform.python_version(),
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

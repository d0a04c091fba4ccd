#!/usr/bin/env python
"""Cached linear probe at ImageNet scale on this machine: one epoch of the 90-epoch LARS recipe (batch
4096, lr 0.1 x 4096/256, epoch 1 of a cosine over 90) on 1,281,167 x 2048 float16 features x 10 cached
views, streamed from memory-mapped feature-cache entries (simsiam_eval/linear/cached.py), then the
50,000-image validation pass: wall time and peak RSS (VmHWM, in a fresh process).

Against it, the protocol mode's cost per epoch: a ResNet-50 forward pass (our backbone, random init,
224 x 224, fp32) over the 1.28M training and 50,000 validation images, from its images/s measured in
the same run (a lower bound for protocol: data loading and the classifier's own step are not counted).
The speed-up at 90 epochs counts the cached mode's extraction (10 views and val, once) against 90 such
passes.

The features are synthetic (class centres plus noise, 1000 classes); each view is a cache entry of
5.2 GB. 10 distinct views need 52 GB of disk: ``--distinct-views`` writes fewer files and makes the other
views hard links to them (said in the output; the page cache then holds fewer distinct bytes).

    python tools/benchmarks/linear_imagenet_scale.py [--distinct-views 2] [--data-dir /tmp/linear-imagenet]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from knn_imagenet_scale import class_noise_chunks, rss_peak_bytes  # (this folder) the data recipe; VmHWM

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES, EPOCHS = 1_281_167, 50_000, 1000, 90
GIB = 1 << 30


def synthetic_features(centres: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float16 rows: the centre of each row's class plus noise, written chunk by chunk."""
    out = torch.empty(len(labels), centres.shape[1], dtype=torch.float16)
    for start, rows in class_noise_chunks(centres, labels, generator):
        out[start:start + len(rows)] = rows
    return out


def make_data(folder: Path, rows: int, dim: int, views: int, distinct: int, seed: int = 0) -> Path:
    """Feature-cache entries view0..view{views-1} (distinct files, then hard links to them) and val."""
    name = folder / f"r{rows}_d{dim}_v{views}_distinct{distinct}_s{seed}"
    if (name / "done").is_file():
        return name
    name.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(IMAGENET_CLASSES, dim, generator=g)
    labels = torch.randint(IMAGENET_CLASSES, (rows,), generator=g)
    for view in range(views):
        path = name / f"view{view}.pt"
        path.unlink(missing_ok=True)
        if view < distinct:
            torch.save({"features": synthetic_features(centres, labels, g), "labels": labels}, path)
        else:
            os.link(name / f"view{view % distinct}.pt", path)
    val_labels = torch.randint(IMAGENET_CLASSES, (IMAGENET_VAL,), generator=g)
    torch.save({"features": synthetic_features(centres, val_labels, g), "labels": val_labels}, name / "val.pt")
    (name / "done").write_text("ok\n")
    return name


def cached_epoch(name: Path, views: int, steps: int | None) -> dict:
    """One epoch of the cached probe through the toolkit's cache reader, stream, trainer and LARS."""
    from simsiam_eval.features import FeatureCache
    from simsiam_eval.linear.cached import CachedViews, sequential_batches
    from simsiam_eval.linear.defaults import DEFAULT_BASE_LR, DEFAULT_BATCH_SIZE, LINEAR_DEFAULTS
    from simsiam_eval.linear.trainer import build_classifier, build_optimizer, cosine_lr, evaluate, train_epoch

    cache = FeatureCache(name, "float16")
    entries = [cache.load(f"view{v}") for v in range(views)]
    val_features, val_labels = cache.load("val")
    if any(entry is None for entry in entries):
        raise SystemExit(f"{name}: unreadable view entries")
    batch = DEFAULT_BATCH_SIZE["lars"]
    lr = DEFAULT_BASE_LR["lars"] * batch / 256
    train = CachedViews([features for features, _ in entries], entries[0][1], batch, seed=0,
                        device=torch.device("cpu"))
    dim = entries[0][0].shape[1]
    fc = build_classifier(dim, IMAGENET_CLASSES)
    optimizer = build_optimizer(fc.parameters(), "lars", lr, LINEAR_DEFAULTS["momentum"],
                                LINEAR_DEFAULTS["weight_decay"], LINEAR_DEFAULTS["lars"])
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(lr, 0, EPOCHS)
    total_steps = -(-len(train) // batch)
    run_steps = min(steps or total_steps, total_steps)
    start = time.perf_counter()
    loss = train_epoch(fc, optimizer, itertools.islice(train.batches(0), run_steps), progress=True,
                       desc="cached linear epoch 1/90")
    train_seconds = (time.perf_counter() - start) * total_steps / run_steps
    start = time.perf_counter()
    metrics = evaluate(fc, sequential_batches(val_features, val_labels, 4096, torch.device("cpu")))
    return {"train": train_seconds, "val": time.perf_counter() - start, "steps": run_steps,
            "total_steps": total_steps, "loss": loss, "top1": metrics["top1"], "peak_rss": rss_peak_bytes()}


def backbone_images_per_second(batch: int, batches: int) -> dict:
    """ResNet-50 pool5 forward (our backbone, eval mode, fp32) at 224 x 224: images per second."""
    from simsiam_eval.features import load_frozen_backbone
    from simsiam_eval.models import pool5

    _, backbone, _ = load_frozen_backbone("random:resnet50", device="cpu")
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        pool5(backbone, images)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            pool5(backbone, images)
        seconds = time.perf_counter() - start
    return {"images_per_second": batch * batches / seconds, "batch": batch, "images": batch * batches}


def spawn(args, *child: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *child, f"--views={args.views}", f"--steps={args.steps}",
                           f"--backbone-batch={args.backbone_batch}", f"--backbone-batches={args.backbone_batches}"],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(child)}: exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=IMAGENET_TRAIN, help="training images (default %(default)s)")
    parser.add_argument("--dim", type=int, default=2048, help="feature width (default %(default)s)")
    parser.add_argument("--views", type=int, default=10, help="cached views (default %(default)s)")
    parser.add_argument("--distinct-views", type=int, default=2,
                        help="views written as their own files; the others are hard links (default %(default)s)")
    parser.add_argument("--steps", type=int, default=0, help="train steps run (0: the whole epoch; fewer are "
                                                             "extrapolated and said so)")
    parser.add_argument("--backbone-batch", type=int, default=32, help="ResNet-50 batch (default %(default)s)")
    parser.add_argument("--backbone-batches", type=int, default=4, help="timed batches (default %(default)s)")
    parser.add_argument("--data-dir", default="/tmp/linear-imagenet", help="where the cache entries are written")
    parser.add_argument("--child", choices=["cached", "backbone"], help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "cached":
        print(json.dumps(cached_epoch(Path(args.child_data), args.views, args.steps or None)))
        return
    if args.child == "backbone":
        print(json.dumps(backbone_images_per_second(args.backbone_batch, args.backbone_batches)))
        return
    distinct = max(1, min(args.distinct_views, args.views))
    clock = time.perf_counter()
    name = make_data(Path(args.data_dir), args.rows, args.dim, args.views, distinct)
    view_bytes = args.rows * args.dim * 2
    print(f"cached linear at ImageNet scale: {args.rows:,} x {args.dim} float16 x {args.views} views "
          f"({view_bytes / GIB:.1f} GiB each, memory-mapped feature-cache entries; {distinct} distinct files, the "
          f"other {args.views - distinct} hard links to them), LARS batch 4096, lr 1.6, epoch 1 of {EPOCHS}, "
          f"val {IMAGENET_VAL:,}, {torch.get_num_threads()} threads, data ready in {time.perf_counter() - clock:.0f} s")
    cached = spawn(args, "--child=cached", f"--child-data={name}")
    partial = "" if cached["steps"] == cached["total_steps"] else \
        f", {cached['steps']} of {cached['total_steps']} steps run and extrapolated"
    epoch = cached["train"] + cached["val"]
    print(f"  cached: train {cached['train']:.1f} s ({cached['total_steps']} steps{partial}), val {cached['val']:.1f} s, "
          f"epoch {epoch:.1f} s, peak RSS {cached['peak_rss'] / GIB:.2f} GiB (loss {cached['loss']:.3f}, "
          f"val top-1 {cached['top1']:.2f}% after one epoch)")
    backbone = spawn(args, "--child=backbone")
    ips = backbone["images_per_second"]
    protocol_epoch = (args.rows + IMAGENET_VAL) / ips
    extraction = (args.views * args.rows + IMAGENET_VAL) / ips
    protocol_total, cached_total = EPOCHS * protocol_epoch, extraction + EPOCHS * epoch
    print(f"  protocol: ResNet-50 forward at 224, batch {backbone['batch']}: {ips:.1f} images/s, so one epoch's "
          f"{args.rows + IMAGENET_VAL:,} forwards take {hours(protocol_epoch)} (data loading and the classifier "
          f"not counted)")
    print(f"  per epoch: cached {protocol_epoch / epoch:,.0f}x faster than protocol's backbone passes")
    print(f"  {EPOCHS} epochs: protocol {hours(protocol_total)}; cached {hours(cached_total)} "
          f"({args.views} views + val extracted once: {hours(extraction)}, then {EPOCHS} epochs: {hours(EPOCHS * epoch)})"
          f": speed-up {protocol_total / cached_total:.1f}x; with the views already cached "
          f"{protocol_total / (EPOCHS * epoch):,.0f}x")


if __name__ == "__main__":
    main()

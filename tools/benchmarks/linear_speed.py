#!/usr/bin/env python
"""Linear probe speed: ``cached`` vs ``protocol`` mode, same checkpoint, data, optimiser and epochs.

protocol runs the frozen backbone on every image every epoch (main_lincls); cached embeds the data
once (cold: into an empty feature cache; warm: the cache already holds the features, e.g. from an
earlier kNN run) and then trains the linear layer on tensors. Prints wall times, speed-ups and the
accuracy difference for each epoch count asked for (protocol costs one backbone pass over train and
val per epoch; a cold cached run costs one pass in all, so its speed-up grows with the epochs).

    python tools/benchmarks/linear_speed.py [--checkpoint CKPT] [--train SPEC --val SPEC] [--epochs 10 30]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
from simsiam_eval.linear.evaluate import run_linear


def probe(args, epochs: int, workdir: Path, name: str, mode: str, cache_dir: Path) -> tuple[dict, float]:
    values = {"checkpoint": args.checkpoint, "train": args.train, "val": args.val,
              "mode": mode, "epochs": epochs, "optimizer": args.optimizer, "image_size": args.image_size,
              "workers": args.workers, "progress": False, "tensorboard": False, "cache_dir": str(cache_dir),
              "output_dir": str(workdir / name), "batch_size": args.batch_size, "base_lr": args.base_lr,
              "device": "cpu", "views": args.views if mode == "cached" else 0}
    cfg = load_config(None, LINEAR_DEFAULTS, [f"{k}={v}" for k, v in values.items()])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    start = time.perf_counter()
    record = run_linear(cfg, info)
    return record, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="random:resnet18:cifar:32",
                        help="checkpoint or random:ARCH[:STEM[:WIDTH]] (default %(default)s)")
    parser.add_argument("--train", default="shapes:data/shapes@train",
                        help="training split spec; shapes:DIR is generated if absent (default %(default)s)")
    parser.add_argument("--val", default="shapes:data/shapes@val", help="validation split spec (default %(default)s)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30],
                        help="epoch counts, each run in both modes (default %(default)s)")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "lars"), help="(default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="(default %(default)s)")
    parser.add_argument("--base-lr", type=float, default=0.0,
                        help="lr = base_lr * batch / 256 (default 0: 30 for sgd as MoCo's main_lincls, 0.1 for "
                             "lars as SimSiam's)")
    parser.add_argument("--image-size", type=int, default=32, help="(default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default %(default)s)")
    parser.add_argument("--views", type=int, default=0,
                        help="cached mode: augmented views cached per image (default 0: the eval view)")
    args = parser.parse_args()
    print(f"linear probe benchmark: {args.checkpoint} on {args.train} / {args.val}, {args.optimizer} batch "
          f"{args.batch_size}, cached views {args.views or 'eval view'}, {torch.get_num_threads()} threads")
    for epochs in args.epochs:
        with tempfile.TemporaryDirectory() as tmp:
            workdir, cache = Path(tmp), Path(tmp) / "cache"
            results = {"protocol": probe(args, epochs, workdir, "protocol", "protocol", cache),
                       "cached (cold cache)": probe(args, epochs, workdir, "cold", "cached", cache),
                       "cached (warm cache)": probe(args, epochs, workdir, "warm", "cached", cache)}
        print(f"{epochs} epochs:")
        base_record, base_seconds = results["protocol"]
        for name, (record, seconds) in results.items():
            m = record["metrics"]
            line = f"  {name:20s} {seconds:8.2f} s   top-1 {m['top1']:6.2f}%   top-5 {m['top5']:6.2f}%"
            if name != "protocol":
                line += (f"   speed-up {base_seconds / seconds:6.1f}x   top-1 difference "
                         f"{m['top1'] - base_record['metrics']['top1']:+.2f} points")
            print(line, flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Images/s of our SimSiam training step vs a minimal re-implementation of the official loop.

Both train the same model on the same synthetic batches; rounds alternate between the two so that
machine load hits both alike. Ours runs with its monitoring on (collapse std, progress bar,
metrics.jsonl and TensorBoard), so the ratio also shows what monitoring costs. Target: >= 1.0.
A third loop in the same rotation is ours with ``cpu_bf16=true`` (bf16 autocast + channels_last on the
CPU, a deviation; the fp32 default is what the parity harness checks): its ratio to both.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn as nn

from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.model import SimSiam, build_model
from pretrain.schedule import build_optimizer
from pretrain.train import train_one_epoch, wrap_for_training
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.metrics_log import MetricsLog


def official_style_epoch(model: SimSiam, optimizer, batches) -> float:
    """main_simsiam.py's train(): forward, -(cos(p1,z2)+cos(p2,z1))/2, loss.item(), SGD step."""
    criterion = nn.CosineSimilarity(dim=1)
    model.train()
    start = time.perf_counter()
    for (x1, x2), _ in batches:
        p1, p2, z1, z2 = model(x1, x2)
        loss = -(criterion(p1, z2.detach()).mean() + criterion(p2, z1.detach()).mean()) * 0.5
        loss.item()  # the official AverageMeter update
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="backbone (default %(default)s)")
    parser.add_argument("--stem", default="cifar", help="imagenet or cifar (default %(default)s)")
    parser.add_argument("--width", type=int, default=32, help="CIFAR-stem base width (default %(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="projector output dim (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=32, help="input side (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="steps per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default %(default)s)")
    args = parser.parse_args()

    overrides = [f"model.arch={args.arch}", f"model.stem={args.stem}", f"model.width={args.width}",
                 f"model.dim={args.dim}", "model.pred_dim=128", "model.proj_layers=2", "epochs=1",
                 "progress=true", "device=cpu"]
    cfg = load_config(None, PRETRAIN_DEFAULTS, overrides)
    bf16_cfg = load_config(None, PRETRAIN_DEFAULTS, [*overrides, "cpu_bf16=true"])
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    batches = [([torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)],
                torch.zeros(args.batch_size, dtype=torch.long)) for _ in range(args.steps)]
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    ours_model, official_model, bf16_model = build_model(cfg.model), build_model(cfg.model), build_model(cfg.model)
    official_model.load_state_dict(ours_model.state_dict())
    bf16_model.load_state_dict(ours_model.state_dict())
    bf16_model = wrap_for_training(bf16_model, bf16_cfg, info)  # channels_last
    ours_opt = build_optimizer(ours_model, 0.05, 0.9, 1e-4, True)
    official_opt = build_optimizer(official_model, 0.05, 0.9, 1e-4, True)
    bf16_opt = build_optimizer(bf16_model, 0.05, 0.9, 1e-4, True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images = args.steps * args.batch_size
    ours_rates, official_rates, bf16_rates = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        metrics = MetricsLog(tmp, tensorboard=True)
        official_style_epoch(official_model, official_opt, batches[:2])  # warm-up both
        train_one_epoch(ours_model, batches[:2], ours_opt, scaler, cfg, info, 0, 0.05, metrics)
        train_one_epoch(bf16_model, batches[:2], bf16_opt, scaler, bf16_cfg, info, 0, 0.05, metrics)
        for round_index in range(args.rounds):
            official_rates.append(images / official_style_epoch(official_model, official_opt, batches))
            stats = train_one_epoch(ours_model, batches, ours_opt, scaler, cfg, info, round_index, 0.05, metrics)
            ours_rates.append(images / stats["seconds"])
            stats = train_one_epoch(bf16_model, batches, bf16_opt, scaler, bf16_cfg, info, round_index, 0.05, metrics)
            bf16_rates.append(images / stats["seconds"])
        metrics.close()
    ours, official, bf16 = (statistics.median(rates) for rates in (ours_rates, official_rates, bf16_rates))
    print(f"model: {args.arch} ({args.stem} stem, width {args.width}), {args.image_size}px, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds, {torch.get_num_threads()} threads")
    print(f"official-style loop : {official:8.1f} images/s (median; rounds {', '.join(f'{r:.1f}' for r in official_rates)})")
    print(f"simsiam-eval loop   : {ours:8.1f} images/s (median; rounds {', '.join(f'{r:.1f}' for r in ours_rates)})")
    print(f"simsiam-eval cpu_bf16: {bf16:7.1f} images/s (median; rounds {', '.join(f'{r:.1f}' for r in bf16_rates)})")
    print(f"ratio ours/official : {ours / official:.3f}  (target >= 1.0)")
    print(f"ratio ours cpu_bf16/official: {bf16 / official:.3f}, cpu_bf16/ours fp32: {bf16 / ours:.3f}")


if __name__ == "__main__":
    main()

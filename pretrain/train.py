"""The SimSiam training loop (main_simsiam.py semantics) on 1 CPU, N CPU processes or N GPUs."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from pretrain.checkpointing import (INIT_NAME, check_same_model, find_resume_checkpoint, list_checkpoints,
                                    load_checkpoint, rng_state, save_checkpoint, set_rng_state)
from pretrain.collapse import collapse_std, collapse_threshold, collapsed_floor, healthy_std, is_collapsed
from pretrain.loss import paired_views_loss
from pretrain.model import SimSiam, build_model
from pretrain.schedule import build_optimizer, scaled_lr, set_epoch_lr
from pretrain.sync_bn import convert_sync_batchnorm
from pretrain.targets import OnlineTargets, batch_blocks, build_targets
from simsiam_eval.atomic import atomic_torch_save
from simsiam_eval.config import Config, dump_config, save_config
from simsiam_eval.data.specs import open_dataset, prepare_dataset
from simsiam_eval.data.subsets import balanced_subset
from simsiam_eval.data.transforms import MultiViewTransform, simsiam_augmentation
from simsiam_eval.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed, loss_is_finite
from simsiam_eval.errors import NonFiniteLoss, UserError
from simsiam_eval.fault_points import fault_point
from simsiam_eval.metrics_log import MetricsLog
from simsiam_eval.models import Pool5
from simsiam_eval.precision import CPU_BF16, autocast, precision_name, uses_amp
from simsiam_eval.provenance import git_revision, versions
from simsiam_eval.run_lock import hold_output_dir

PROGRESS_EVERY = 10  # iterations between progress-bar refreshes (each one syncs the device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        tqdm.write(message)


def _strip_module(state_dict: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def unwrap(model: nn.Module) -> nn.Module:
    """The SimSiam module inside a DistributedDataParallel wrapper (the model itself when unwrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def official_state_dict(model: nn.Module) -> dict:
    """The model's state dict with the ``module.`` prefix the official (DDP) checkpoints carry."""
    return {f"module.{k}": v for k, v in unwrap(model).state_dict().items()}


class WithIndex(Dataset):
    """Items ``(views, index of the image)``: the per-image targets need the index, not the label."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], index


def build_loader(cfg: Config, info: DistInfo) -> tuple[DataLoader, DistributedSampler]:
    """Batches of ``(views, image indices)``: ``2 * loss.pairs`` augmented views of each image."""
    if cfg.loss.pairs < 1:
        raise UserError(f"loss.pairs must be >= 1, got {cfg.loss.pairs}")
    augmentation = simsiam_augmentation(cfg.data.image_size, cfg.data.min_scale, cfg.data.blur)
    dataset = open_dataset(cfg.data.train, MultiViewTransform(augmentation, 2 * cfg.loss.pairs))
    if cfg.data.fraction != 1.0:
        if not 0.0 < cfg.data.fraction < 1.0:
            raise UserError(f"data.fraction must be in (0, 1], got {cfg.data.fraction}")
        dataset = Subset(dataset, balanced_subset(dataset.targets, cfg.data.fraction, seed=0).tolist())
    dataset = WithIndex(dataset)
    per_process = cfg.batch_size // info.world_size
    if per_process < 2:
        raise UserError(f"batch_size={cfg.batch_size} over {info.world_size} processes leaves fewer than "
                        "2 images per process (BatchNorm needs at least 2)")
    if len(dataset) < cfg.batch_size:
        raise UserError(f"{cfg.data.train}: {len(dataset)} images, fewer than batch_size={cfg.batch_size}")
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=per_process, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=info.device.type == "cuda", drop_last=True)
    return loader, sampler


def resume_if_possible(cfg: Config, model: SimSiam, optimizer, scaler, targets: OnlineTargets, output_dir: Path,
                       info: DistInfo) -> int:
    """Restore model, optimiser, scaler, target and RNG state; return the epoch to start from."""
    path = find_resume_checkpoint(cfg.resume, output_dir)
    if path is None:
        return 0
    state = load_checkpoint(path)
    check_same_model(path, state.get("config"), state["arch"], cfg.model)
    saved_kind = ((state.get("config") or {}).get("target") or {}).get("kind", "online")
    if saved_kind != cfg.target.kind:
        raise UserError(f"{path}: cannot resume, the checkpoint was trained with target.kind={saved_kind} "
                        f"(config has {cfg.target.kind})")
    try:
        model.load_state_dict(_strip_module(state["state_dict"]))
        optimizer.load_state_dict(state["optimizer"])
        targets.load_state_dict(state.get("targets") or {})
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: does not fit this model ({str(exc).splitlines()[0]})") from None
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        set_rng_state(state["rng"])
    _log(info, f"resumed from {path} (epoch {state['epoch']})")
    return int(state["epoch"])


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """channels_last tensors: on CUDA when ``channels_last`` asks, on the CPU with ``cpu_bf16``."""
    return (cfg.channels_last and device.type == "cuda") or precision_name(cfg.amp, device, cfg.cpu_bf16) == CPU_BF16


def _to_device(views, device: torch.device, channels_last: bool) -> list[torch.Tensor]:
    views = [v.to(device, non_blocking=True) for v in views]
    return [v.contiguous(memory_format=torch.channels_last) for v in views] if channels_last else views


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, scaler, cfg: Config, info: DistInfo,
                    epoch: int, lr: float, metrics: MetricsLog | None,
                    targets: OnlineTargets | None = None) -> dict[str, float]:
    """One pass over the data; returns mean loss, mean and median collapse std of its batches, and
    throughput (all processes; the median is each process's, averaged over processes).

    ``targets`` (default: SimSiam's own z) gives each step's targets; for the multi-step alternation it
    pre-computes them for each block of batches before the block's steps."""
    model.train()
    targets = targets or OnlineTargets()
    inner = unwrap(model)
    device = info.device
    precision = precision_name(cfg.amp, device, cfg.cpu_bf16)
    channels_last = uses_channels_last(cfg, device)
    totals = torch.zeros(2, device=device)
    batch_stds = []
    steps, images, start = 0, 0, time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    for block in batch_blocks(loader, targets.block_size):
        with autocast(precision):
            targets.prepare(inner.encoder, block)
        for position, (views, indices) in enumerate(block):
            xs = _to_device(views, device, channels_last)
            with autocast(precision):
                outputs = model(*xs)
                ps, zs = outputs[:len(xs)], outputs[len(xs):]
                ts = targets.targets(zs, xs, torch.as_tensor(indices), position)
            loss = paired_views_loss([p.float() for p in ps], [t.float() for t in ts],
                                     similarity=cfg.loss.similarity, symmetric=cfg.loss.symmetric,
                                     stop_gradient=cfg.loss.stop_gradient)
            if not loss_is_finite(loss, steps + 1, PROGRESS_EVERY):
                raise NonFiniteLoss(epoch + 1, steps + 1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            targets.after_step(inner.encoder, epoch * len(loader) + steps)
            batch_stds.append(collapse_std(zs[0]))
            totals += torch.stack([loss.detach(), batch_stds[-1]])
            steps += 1
            images += xs[0].shape[0] * info.world_size
            bar.update(1)
            if info.is_main and steps % PROGRESS_EVERY == 0:
                mean_loss, mean_std = (totals / steps).tolist()
                rate = images / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.4g}", std=f"{mean_std:.4f}", img_s=f"{rate:.0f}")
                if metrics is not None:
                    metrics.scalars({"loss": mean_loss, "collapse_std": mean_std, "lr": lr},
                                    epoch * len(loader) + steps, prefix="train_iter/")
    bar.close()
    seconds = time.perf_counter() - start
    median_std = torch.stack(batch_stds).quantile(0.5) if batch_stds else torch.zeros((), device=device)
    mean_loss, mean_std, median_std = all_reduce_mean(torch.cat([totals / max(steps, 1), median_std[None]])).tolist()
    return {"loss": mean_loss, "collapse_std": mean_std, "collapse_std_median": median_std,
            "images_per_sec": images / seconds, "seconds": seconds}


def run_knn_monitor(model: nn.Module, cfg: Config, info: DistInfo) -> dict[str, float]:
    """kNN accuracy of the pool5 features of the encoder being trained.

    Every random generator is restored afterwards (the monitor's data loaders draw their seeds from
    torch's): a run with the monitor trains exactly as the same run without it."""
    from simsiam_eval.knn.monitor import run_knn_monitor as knn_monitor

    inner = unwrap(model)
    state = rng_state()
    try:
        return knn_monitor(Pool5(inner.encoder), cfg.knn, info.device, cfg.knn.image_size,
                           precision=precision_name(cfg.amp, info.device, cfg.cpu_bf16))
    finally:
        set_rng_state(state)


def _warn_if_collapsed(info: DistInfo, std: float, cfg: Config, batch: int) -> None:
    if is_collapsed(std, cfg.model.dim, batch, cfg.monitor.collapse_ratio):
        threshold = collapse_threshold(cfg.model.dim, batch, cfg.monitor.collapse_ratio)
        _log(info, "!" * 78 + f"\nWARNING: the representation has COLLAPSED: collapse std {std:.5f} is below "
                   f"{threshold:.5f} (healthy ~{healthy_std(cfg.model.dim):.5f}, a collapsed batch of {batch} "
                   f"shows ~{collapsed_floor(batch) * healthy_std(cfg.model.dim):.5f}).\n"
                   "Check loss.stop_gradient, model.predictor and the learning rate.\n" + "!" * 78)


def _epoch_line(record: dict, epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  lr {record['lr']:.4g}  "
            f"collapse std {record['collapse_std']:.4f} (median batch {record['collapse_std_median']:.4f}, "
            f"healthy ~{record['collapse_reference']:.4f})  "
            f"{record['images_per_sec']:.1f} img/s")
    if "knn_top1" in record:
        line += f"  kNN top-1 {record['knn_top1']:.2f}%"
    return line


def build_model_and_optimizer(cfg: Config, info: DistInfo, init_lr: float) -> tuple[SimSiam, torch.optim.SGD]:
    """The SimSiam model on its device (BatchNorm synchronised over processes when asked) and the SGD
    optimiser over its parameters, built after the conversion so that it holds what the model uses."""
    model = build_model(cfg.model).to(info.device)
    if info.distributed and cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, info.device)
    optimizer = build_optimizer(model, init_lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.fix_pred_lr,
                                cfg.optim.decay_norm_and_bias)
    return model, optimizer


def wrap_for_training(model: nn.Module, cfg: Config, info: DistInfo) -> nn.Module:
    """DDP over several processes; channels_last on CUDA when asked, and with cpu_bf16."""
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if uses_channels_last(cfg, info.device):
        model = model.to(memory_format=torch.channels_last)
    return model


def train(cfg: Config) -> Path | None:
    """Pretrain SimSiam as ``cfg`` says; return the last checkpoint written (None if already done)."""
    info = init_distributed(cfg.device)
    output_dir = Path(cfg.output_dir)
    try:
        with hold_output_dir(output_dir, info.is_main):
            if info.is_main:
                save_config(cfg, output_dir / "config.yaml")
                prepare_dataset(cfg.data.train)
                _log(info, f"simsiam-eval pretrain | git {git_revision()} | {info.world_size} process(es) on "
                           f"{info.device.type} | precision {precision_name(cfg.amp, info.device, cfg.cpu_bf16)}"
                           f"\n{dump_config(cfg)}")
            barrier()
            return _train(cfg, info, output_dir)
    finally:
        cleanup()


def _train(cfg: Config, info: DistInfo, output_dir: Path) -> Path | None:
    seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    loader, sampler = build_loader(cfg, info)
    init_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
    model, optimizer = build_model_and_optimizer(cfg, info, init_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=uses_amp(cfg.amp, info.device))
    targets = build_targets(cfg.target, cfg.loss.stop_gradient, model.encoder, len(loader.dataset), cfg.model.dim,
                            cfg.epochs * len(loader), info.device)
    start_epoch = resume_if_possible(cfg, model, optimizer, scaler, targets, output_dir, info)
    if start_epoch == 0 and info.is_main:
        atomic_torch_save({"epoch": 0, "arch": cfg.model.arch, "state_dict": official_state_dict(model),
                           "config": cfg.to_dict(), "versions": versions(), "git": git_revision()},
                          output_dir / INIT_NAME)
    if start_epoch >= cfg.epochs:
        _log(info, f"{output_dir}: already trained for {start_epoch} epochs (epochs={cfg.epochs}); nothing to do")
        return None
    model = wrap_for_training(model, cfg, info)
    metrics = MetricsLog(output_dir, cfg.tensorboard) if info.is_main else None
    if metrics is not None:
        metrics.truncate_after("epoch", start_epoch)
    reference, last = healthy_std(cfg.model.dim), None
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        lr = set_epoch_lr(optimizer, init_lr, epoch, cfg.epochs, cfg.optim.warmup_epochs, cfg.optim.schedule)
        try:
            stats = train_one_epoch(model, loader, optimizer, scaler, cfg, info, epoch, lr, metrics, targets)
        except NonFiniteLoss as exc:
            saved = list_checkpoints(output_dir)
            raise UserError(f"{output_dir}: {exc}; stopped, the epoch is not saved; last good checkpoint: "
                            f"{saved[-1] if saved else output_dir / INIT_NAME} (a re-run resumes from it: lower "
                            "optim.base_lr first if the loss diverged)") from None
        record = {"epoch": epoch + 1, "lr": lr, "collapse_reference": reference, **stats}
        if cfg.knn.every_n_epochs and ((epoch + 1) % cfg.knn.every_n_epochs == 0 or epoch + 1 == cfg.epochs):
            record.update(run_knn_monitor(model, cfg, info))
        if info.is_main:
            state = {"epoch": epoch + 1, "arch": cfg.model.arch, "state_dict": official_state_dict(model),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                     "targets": targets.state_dict(),
                     "config": cfg.to_dict(), "versions": versions(), "git": git_revision()}
            metrics.record(record, epoch + 1, prefix="epoch/")  # before the checkpoint: a resume truncates it
            last = save_checkpoint(output_dir, state, cfg.keep_last)
            fault_point("epoch-end")
            _log(info, _epoch_line(record, cfg.epochs))
            _warn_if_collapsed(info, record["collapse_std"], cfg, loader.batch_size)
        barrier()
    if metrics is not None:
        metrics.close()
        _log(info, f"done: last checkpoint {last}")
    return last

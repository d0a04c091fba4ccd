"""``linear`` evaluation of a checkpoint: main_lincls (``protocol``) or the fast ``cached`` deviation.

protocol: frozen backbone in eval mode; every step embeds RandomResizedCrop+flip images; fc
          N(0, 0.01)/0; LARS (apex LARC, trust 0.001, clip False) batch 4096, lr 0.1 x batch/256
          (SimSiam's main_lincls --lars), or SGD lr 30 x batch/256 with batch 256 (MoCo's main_lincls
          lr and batch); cosine per epoch; momentum 0.9, wd 0; validation Resize+CenterCrop every
          epoch; at the end the backbone must be bit-identical. The record's top-1/top-5 are the best
          epoch's, as main_lincls reports them; the last epoch's are kept beside them.
cached:   the same classifier and optimiser on pool5 features computed once (the eval view, or
          ``views`` cached augmented views per image, one drawn per image per epoch), streamed from the
          feature cache batch by batch (linear/cached.py), never held whole in float32.
low-shot: either mode trains on a subset of the training images (``label_fraction`` of each class drawn
          with ``subset_seed``, or the images ``subset_file`` lists) and validates on the full val set;
          cached mode extracts (or reuses) the features of the full training set and selects the subset.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from simsiam_eval.config import Config, require_keys
from simsiam_eval.data.sizes import evaluation_size, evaluation_transform, print_upsampling_note
from simsiam_eval.data.specs import open_dataset, prepare_dataset
from simsiam_eval.data.subsets import balanced_subset, subset_from_file, subset_hash
from simsiam_eval.data.transforms import linear_train_transform, normalization_settings
from simsiam_eval.distributed import DistInfo
from simsiam_eval.errors import UserError
from simsiam_eval.features import FeatureCache, check_same_classes, dataset_features, load_frozen_backbone
from simsiam_eval.linear.cached import CachedViews, sequential_batches
from simsiam_eval.linear.defaults import DEFAULT_BASE_LR, DEFAULT_BATCH_SIZE, MODES, OPTIMIZERS
from simsiam_eval.linear.trainer import LinearTrainer, build_classifier, build_optimizer, record_metrics
from simsiam_eval.models import pool5
from simsiam_eval.precision import autocast, memory_format, precision_name
from simsiam_eval.results.records import build_record
from simsiam_eval.run_lock import hold_output_dir


def resolved_hyperparameters(cfg: Config) -> tuple[int, float, float]:
    """(batch size, base lr, lr) with the per-optimiser defaults of main_lincls."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{cfg.optimizer}' (choose from {', '.join(OPTIMIZERS)})")
    batch = cfg.batch_size or DEFAULT_BATCH_SIZE[cfg.optimizer]
    base_lr = cfg.base_lr or DEFAULT_BASE_LR[cfg.optimizer]
    return batch, base_lr, base_lr * batch / 256


def check_linear_config(cfg: Config) -> None:
    """One-line errors for missing data/checkpoint, unknown modes or optimisers and bad sizes."""
    require_keys(cfg, ("checkpoint", "train", "val"))
    if cfg.mode not in MODES:
        raise UserError(f"unknown mode '{cfg.mode}' (choose from {', '.join(MODES)})")
    if cfg.epochs < 1 or cfg.views < 0 or cfg.batch_size < 0:
        raise UserError("epochs must be >= 1, views >= 0 and batch_size >= 0")
    if cfg.views and cfg.mode != "cached":
        raise UserError("views applies to mode=cached only")
    if cfg.label_fraction and cfg.subset_file:
        raise UserError("label_fraction and subset_file are both set: give one of them")
    if not 0.0 <= cfg.label_fraction <= 1.0:
        raise UserError(f"label_fraction must be in [0, 1] (0 = all labels), got {cfg.label_fraction}")
    if cfg.subset_file and not Path(cfg.subset_file).is_file():
        raise UserError(f"subset_file {cfg.subset_file}: no such file")
    resolved_hyperparameters(cfg)


def _identity(cfg: Config, checkpoint: dict, subset: np.ndarray | None) -> dict:
    keys = ("mode", "views", "train", "val", "optimizer", "epochs", "momentum", "weight_decay", "image_size",
            "resize", "seed")
    batch, base_lr, _ = resolved_hyperparameters(cfg)
    identity = {"checkpoint": checkpoint["sha256"], **{k: cfg[k] for k in keys}, "batch_size": batch,
                "base_lr": base_lr, "lars": cfg.lars.to_dict() if cfg.optimizer == "lars" else None}
    if subset is not None:  # only then, so the states of full-label runs stay resumable
        identity["subset"] = subset_hash(subset)
    return identity


def training_subset(cfg: Config, labels: Callable[[], np.ndarray],
                    train_set: Callable[[], object]) -> np.ndarray | None:
    """Indices of the training images the probe learns from: the balanced ``label_fraction`` draw, the
    images ``subset_file`` lists, or None (all of them). ``labels`` and ``train_set`` are called only if needed."""
    if cfg.subset_file:
        return subset_from_file(cfg.subset_file, train_set())
    if cfg.label_fraction:
        return balanced_subset(labels(), cfg.label_fraction, cfg.subset_seed)
    return None


def _val_transform(cfg: Config):
    """main_lincls' validation transform at ``cfg.image_size`` (the images as they are at their native size)."""
    return evaluation_transform(cfg.image_size, cfg.train, cfg.val, resize=cfg.resize or None)


def _cached_batches(cfg: Config, info: DistInfo, backbone, model_id: str):
    """Features once (train views and val) -> batch iterators over tensors on the device."""
    cache = FeatureCache.optional(cfg.cache, cfg.cache_dir, cfg.cache_dtype)
    common = dict(model_id=model_id, cache=cache, batch_size=cfg.eval_batch_size, workers=cfg.workers,
                  precision=precision_name(cfg.amp, info.device, cfg.cpu_bf16), progress=cfg.progress)
    val_transform = _val_transform(cfg)
    val = dataset_features(backbone, cfg.val, val_transform, info.device, **common)
    if cfg.views == 0:
        train_transform = val_transform
        views = [dataset_features(backbone, cfg.train, train_transform, info.device, **common)]
    else:
        train_transform = linear_train_transform(cfg.image_size)
        views = [dataset_features(backbone, cfg.train, train_transform, info.device, view_seed=v, **common)
                 for v in range(cfg.views)]
    check_same_classes(views[0].classes, val.classes, cfg.train, cfg.val)
    train_y = views[0].labels
    subset = training_subset(cfg, lambda: train_y.numpy(), lambda: open_dataset(prepare_dataset(cfg.train)))
    # features of the full set are cached (shared with kNN and other subsets); batches are streamed from them
    batch, _, _ = resolved_hyperparameters(cfg)
    train = CachedViews([v.features for v in views], train_y, batch, cfg.seed, info.device, subset)

    def val_batches():
        return sequential_batches(val.features, val.labels, cfg.eval_batch_size, info.device)

    sizes = {"num_train": len(train_y), "num_val": len(val.labels), "num_classes": len(val.classes),
             "feature_dim": val.features.shape[1]}
    return train.batches, val_batches, sizes, {"train": repr(train_transform), "val": repr(val_transform)}, subset


def _protocol_batches(cfg: Config, info: DistInfo, backbone):
    """Image loaders whose batches go through the frozen backbone (main_lincls)."""
    train_transform = linear_train_transform(cfg.image_size)
    val_transform = _val_transform(cfg)
    train_set = open_dataset(prepare_dataset(cfg.train), train_transform)
    val_set = open_dataset(prepare_dataset(cfg.val), val_transform)
    check_same_classes(train_set.classes, val_set.classes, cfg.train, cfg.val)
    for spec, dataset in ((cfg.train, train_set), (cfg.val, val_set)):
        if len(dataset) == 0:
            raise UserError(f"{spec}: the data set is empty")
    subset = training_subset(cfg, lambda: np.asarray(train_set.targets), lambda: train_set)
    trained = train_set if subset is None else Subset(train_set, subset.tolist())
    batch, _, _ = resolved_hyperparameters(cfg)
    per_process = max(1, batch // info.world_size)
    sampler = DistributedSampler(trained, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed)
    loader_options = dict(num_workers=cfg.workers, pin_memory=info.device.type == "cuda",
                          persistent_workers=cfg.workers > 0)
    train_loader = DataLoader(trained, batch_size=per_process, sampler=sampler, **loader_options)
    val_loader = DataLoader(Subset(val_set, range(info.rank, len(val_set), info.world_size)),
                            batch_size=cfg.eval_batch_size, shuffle=False, **loader_options)
    precision = precision_name(cfg.amp, info.device, cfg.cpu_bf16)
    layout = memory_format(precision)
    backbone.to(memory_format=layout)

    def embed(loader):
        backbone.eval()  # frozen BN statistics, whatever mode the module was handed over in
        for images, labels in loader:
            with torch.no_grad(), autocast(precision):
                features = pool5(backbone, images.to(info.device, non_blocking=True).contiguous(memory_format=layout))
            yield features.float(), labels.to(info.device, non_blocking=True)

    def train_batches(epoch: int):
        sampler.set_epoch(epoch)
        # the epoch's crops and flips (and workers' seeds) from (seed, epoch, rank): the same after a resume
        torch.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + info.rank)
        return embed(train_loader)

    def val_batches():
        return embed(val_loader)

    with torch.no_grad():
        probe = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=info.device)
        dim = pool5(backbone.eval(), probe).shape[1]
    sizes = {"num_train": len(train_set), "num_val": len(val_set), "num_classes": len(train_set.classes),
             "feature_dim": dim}
    return train_batches, val_batches, sizes, {"train": repr(train_transform), "val": repr(val_transform)}, subset


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def run_linear(cfg: Config, info: DistInfo) -> dict:
    """Train (or resume) the linear probe of ``cfg.checkpoint``; return its record. The run holds
    ``cfg.output_dir``: another run into the same folder is refused while this one lives."""
    check_linear_config(cfg)
    with hold_output_dir(cfg.output_dir, info.is_main) if cfg.output_dir else contextlib.nullcontext():
        return _run_linear(cfg, info)


def _run_linear(cfg: Config, info: DistInfo) -> dict:
    started, clock = time.time(), time.perf_counter()
    cfg = Config({**cfg, "image_size": evaluation_size(cfg.image_size, cfg.train)})
    if info.is_main:
        print_upsampling_note(cfg.train, cfg.image_size)
    checkpoint, backbone, model_id = load_frozen_backbone(cfg.checkpoint, cfg.format, cfg.arch or None, info.device)
    before = _snapshot(backbone) if cfg.mode == "protocol" else None
    if cfg.mode == "cached":
        train_batches, val_batches, sizes, transforms, subset = _cached_batches(cfg, info, backbone, model_id)
        del backbone
    else:
        train_batches, val_batches, sizes, transforms, subset = _protocol_batches(cfg, info, backbone)
    features_seconds = time.perf_counter() - clock
    batch, base_lr, lr = resolved_hyperparameters(cfg)
    classifier = build_classifier(sizes["feature_dim"], sizes["num_classes"], cfg.seed).to(info.device)
    distributed_fc = cfg.mode == "protocol" and info.distributed
    forward = (DistributedDataParallel(classifier, device_ids=[info.device.index] if info.device.type == "cuda"
                                       else None) if distributed_fc else classifier)
    optimizer = build_optimizer(classifier.parameters(), cfg.optimizer, lr, cfg.momentum, cfg.weight_decay,
                                cfg.lars.to_dict())
    trainer = LinearTrainer(classifier, optimizer, lr, cfg.epochs, cfg.output_dir, _identity(cfg, checkpoint, subset),
                            is_main=info.is_main, tensorboard=cfg.tensorboard, progress=cfg.progress,
                            forward=forward)
    resumed_from = trainer.resume() if cfg.resume else 0
    history = trainer.fit(train_batches, val_batches, reduce=distributed_fc)
    settings = {"mode": cfg.mode, "views": cfg.views, "optimizer": cfg.optimizer, "epochs": cfg.epochs,
                "label_fraction": cfg.label_fraction, "subset_seed": cfg.subset_seed, "subset_file": cfg.subset_file,
                "subset_size": sizes["num_train"] if subset is None else len(subset),
                "subset_hash": None if subset is None else subset_hash(subset),
                "precision": precision_name(cfg.amp, info.device, cfg.cpu_bf16),
                "batch_size": batch, "base_lr": base_lr, "lr": lr, "momentum": cfg.momentum,
                "weight_decay": cfg.weight_decay, "lars": cfg.lars.to_dict() if cfg.optimizer == "lars" else None,
                "schedule": "cosine per epoch", "image_size": cfg.image_size, "transforms": transforms,
                "normalization": normalization_settings(),
                "feature_dim": sizes["feature_dim"], "resumed_from_epoch": resumed_from,
                "timings": {"features_or_setup": round(features_seconds, 3),
                            "epochs": round(sum(row["seconds"] for row in history[resumed_from:]), 3)}}
    if before is not None:
        after = _snapshot(backbone)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        if changed:
            raise RuntimeError(f"the frozen backbone changed during linear training: {changed[:5]}")
        settings["backbone_unchanged"] = True
    metrics = record_metrics(history)
    data = {"train": cfg.train, "val": cfg.val, **{k: sizes[k] for k in ("num_train", "num_val", "num_classes")}}
    protocol = "linear" if cfg.mode == "protocol" else "linear-cached"
    trial = cfg.subset_seed if cfg.label_fraction else None  # subset seeds are the trials of a low-shot cell
    return build_record(protocol, metrics, checkpoint, data, settings, started, time.perf_counter() - clock,
                        seed=cfg.seed, trial=trial, tags=cfg.tags, name=cfg.name or None)

"""Drive the real pretraining loop of pretrain/train.py on fixed batches (shared by the pretraining tests)."""
from __future__ import annotations

import torch

from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.schedule import scaled_lr, set_epoch_lr
from pretrain.train import build_model_and_optimizer, seed_everything, train_one_epoch, wrap_for_training
from simsiam_eval.config import Config, load_config
from simsiam_eval.distributed import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def tiny_config(*overrides: str) -> Config:
    """A small CIFAR-stem ResNet-18 run on CPU (the defaults' 3-layer projector unless overridden)."""
    return load_config(None, PRETRAIN_DEFAULTS, ["model.arch=resnet18", "model.stem=cifar", "model.width=8",
                                                 "model.dim=32", "model.pred_dim=8", "device=cpu", "progress=false",
                                                 *overrides])


def run_real_loop(cfg: Config, info: DistInfo, batches: list) -> tuple[dict, bool, list[float]]:
    """What pretrain/train.py does: seed, model (SyncBN) and optimiser, DDP, then per epoch the lr and
    ``train_one_epoch`` over that epoch's batches. Returns the final state dict, whether the optimiser
    holds exactly the model's parameters, and each epoch's mean loss."""
    seed_everything(cfg.seed)
    init_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size)
    model, optimizer = build_model_and_optimizer(cfg, info, init_lr)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    optimiser_holds_model = optimised == {id(p) for p in model.parameters()}
    model = wrap_for_training(model, cfg, info)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = []
    for epoch, epoch_batches in enumerate(batches):
        lr = set_epoch_lr(optimizer, init_lr, epoch, cfg.epochs, cfg.optim.warmup_epochs, cfg.optim.schedule)
        losses.append(train_one_epoch(model, epoch_batches, optimizer, scaler, cfg, info, epoch, lr, None)["loss"])
    inner = model.module if info.distributed else model
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}, optimiser_holds_model, losses

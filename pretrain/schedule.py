"""Learning-rate rules of main_simsiam.py: linear scaling, per-epoch cosine, fixed predictor lr."""
from __future__ import annotations

import math

import torch

from simsiam_eval.errors import UserError


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """lr = base_lr x batch / 256."""
    return base_lr * batch_size / 256


SCHEDULES = ("cosine", "constant")


def lr_at_epoch(init_lr: float, epoch: int, epochs: int, warmup_epochs: int = 0, schedule: str = "cosine") -> float:
    """Cosine decay per epoch, lr_e = lr * 0.5 * (1 + cos(pi e / E)) (the official schedule), or ``constant``
    lr (a deviation, for the study's collapse experiments), after an optional linear warm-up."""
    if schedule not in SCHEDULES:
        raise UserError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if epoch < warmup_epochs:
        return init_lr * (epoch + 1) / warmup_epochs
    if schedule == "constant":
        return init_lr
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return init_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_epoch_lr(optimizer: torch.optim.Optimizer, init_lr: float, epoch: int, epochs: int,
                 warmup_epochs: int = 0, schedule: str = "cosine") -> float:
    """Apply the epoch's lr to every group; groups marked ``fix_lr`` keep ``init_lr``."""
    lr = lr_at_epoch(init_lr, epoch, epochs, warmup_epochs, schedule)
    for group in optimizer.param_groups:
        group["lr"] = init_lr if group.get("fix_lr", False) else lr
    return lr


def build_optimizer(model: torch.nn.Module, init_lr: float, momentum: float, weight_decay: float,
                    fix_pred_lr: bool, decay_norm_and_bias: bool = True) -> torch.optim.SGD:
    """SGD over encoder and predictor (every parameter, as main_simsiam.py; a frozen predictor's are
    left out); with ``fix_pred_lr`` the predictor group is marked ``fix_lr``. ``decay_norm_and_bias=False``
    (a deviation, for the study's collapse experiments) exempts 1-d parameters (BatchNorm γ/β, biases)
    from weight decay."""
    encoder = list(model.encoder.parameters())
    predictor = [p for p in model.predictor.parameters() if p.requires_grad]
    if fix_pred_lr:
        groups = [{"params": encoder, "fix_lr": False}, {"params": predictor, "fix_lr": True}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": encoder + predictor, "fix_lr": False}]
    if not decay_norm_and_bias:  # each group in two: weight matrices and kernels decayed, 1-d parameters not
        decayed = [dict(group, params=[p for p in group["params"] if p.ndim > 1]) for group in groups]
        exempt = [dict(group, params=[p for p in group["params"] if p.ndim <= 1], weight_decay=0.0) for group in groups]
        groups = [g for g in decayed + exempt if g["params"]]
    return torch.optim.SGD(groups, lr=init_lr, momentum=momentum, weight_decay=weight_decay)

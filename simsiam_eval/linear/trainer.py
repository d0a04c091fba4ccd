"""A linear classifier trained on frozen features (main_lincls semantics), resumable, logged per epoch.

The feature source is a function: ``protocol`` mode feeds pool5 features of augmented images through
the frozen backbone every step, ``cached`` mode feeds rows of a feature tensor (see evaluate.py).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from simsiam_eval.atomic import atomic_torch_save
from simsiam_eval.distributed import all_reduce_sum, loss_is_finite
from simsiam_eval.checkpoints.files import load_file
from simsiam_eval.errors import NonFiniteLoss, UserError
from simsiam_eval.fault_points import fault_point
from simsiam_eval.linear.defaults import OPTIMIZERS
from simsiam_eval.linear.lars import LARS
from simsiam_eval.metrics_log import MetricsLog

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (features (B, D) float32, labels (B,)) on the device


def build_classifier(dim: int, num_classes: int, seed: int = 0) -> nn.Linear:
    """The probe: weight ~ N(0, 0.01), bias 0 (main_lincls)."""
    fc = nn.Linear(dim, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=generator) * 0.01)
        fc.bias.zero_()
    return fc


def build_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                    lars: Mapping | None = None) -> torch.optim.Optimizer:
    """SGD, or LARS (apex LARC semantics: trust 0.001, clip False unless ``lars`` says otherwise)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        options = dict(lars or {})
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **options)
    raise UserError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


def cosine_lr(init_lr: float, epoch: int, epochs: int) -> float:
    """main_lincls' per-epoch schedule: init_lr * 0.5 * (1 + cos(pi * epoch / epochs))."""
    return init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def record_metrics(history: Sequence[Mapping]) -> dict[str, float]:
    """The record's metrics from the per-epoch rows: ``top1``/``top5`` and ``best_epoch`` (1-based) of the
    best epoch, as main_lincls reports it (``best_acc1``; ``model_best.pth.tar`` is saved only when top-1
    beats every earlier epoch, so the first of tied epochs), ``last_top1``/``last_top5`` of the last one,
    and the last epoch's training ``loss``."""
    best, last = max(history, key=lambda row: row["top1"]), history[-1]  # max keeps the first of ties
    return {"top1": best["top1"], "top5": best["top5"], "best_epoch": best["epoch"],
            "last_top1": last["top1"], "last_top5": last["top5"], "loss": last["loss"]}


def train_epoch(fc: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, reduce: bool = False,
                progress: bool = False, desc: str = "train", epoch: int = 1) -> float:
    """One pass of cross-entropy training (``epoch``, 1-based, names it in errors); returns the mean loss
    per sample. A NaN/Inf loss raises NonFiniteLoss (on the CPU before its step)."""
    fc.train()
    device = next(fc.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for step, (features, labels) in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False,
                                                   unit="batch")):
        loss = F.cross_entropy(fc(features), labels)
        if not loss_is_finite(loss, step + 1):
            raise NonFiniteLoss(epoch, step + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += torch.stack([loss.detach().double() * len(labels),
                               torch.tensor(len(labels), dtype=torch.float64, device=device)])
    if reduce:
        totals = all_reduce_sum(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


@torch.no_grad()
def evaluate(fc: nn.Module, batches: Batches, reduce: bool = False) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent; top-5 = top-min(5, classes)) and mean loss."""
    fc.eval()
    device = next(fc.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, count
    for features, labels in batches:
        logits = fc(features)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels.unsqueeze(1)
        totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                               top[:, 0].sum().double(), top.any(dim=1).sum().double(),
                               torch.tensor(len(labels), dtype=torch.float64, device=device)])
    if reduce:
        totals = all_reduce_sum(totals)
    count = totals[3].clamp(min=1)
    return {"val_loss": (totals[0] / count).item(), "top1": (100 * totals[1] / count).item(),
            "top5": (100 * totals[2] / count).item()}


class LinearTrainer:
    """Epoch loop with cosine lr, per-epoch metrics.jsonl and an atomic resume state (rank 0 writes).

    ``identity`` describes what is being trained (checkpoint, data, settings); a saved state with a
    different identity is refused instead of silently mixed.
    """

    STATE_NAME = "linear_state.pth"

    def __init__(self, classifier: nn.Linear, optimizer: torch.optim.Optimizer, init_lr: float, epochs: int,
                 output_dir: str | Path | None, identity: Mapping, is_main: bool = True,
                 tensorboard: bool = False, progress: bool = False, forward: nn.Module | None = None) -> None:
        """``forward`` is the module called on features (e.g. the classifier wrapped in DDP)."""
        self.classifier, self.fc = classifier, forward or classifier
        self.optimizer, self.init_lr, self.epochs = optimizer, init_lr, epochs
        self.output_dir = Path(output_dir) if output_dir else None
        self.identity, self.is_main, self.progress = dict(identity), is_main, progress
        self.tensorboard = tensorboard
        self.history: list[dict] = []
        self.start_epoch = 0

    @property
    def state_path(self) -> Path | None:
        return self.output_dir / self.STATE_NAME if self.output_dir else None

    def resume(self) -> int:
        """Load the saved state if there is one; returns the number of finished epochs."""
        path = self.state_path
        if path is None or not path.is_file():
            return 0
        try:
            state = load_file(path)
        except UserError as exc:
            raise UserError(f"{exc}; it is a saved linear-probe state: delete it or pass resume=false") from None
        if state.get("identity") != self.identity:
            changed = sorted(k for k in set(self.identity) | set(state.get("identity", {}))
                             if self.identity.get(k) != state.get("identity", {}).get(k))
            raise UserError(f"{path}: belongs to a different linear probe (differs in {', '.join(changed)}); "
                            "use another output_dir or pass resume=false")
        self.classifier.load_state_dict(state["fc"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        return self.start_epoch

    def fit(self, train_batches: Callable[[int], Batches], val_batches: Callable[[], Batches],
            reduce: bool = False) -> list[dict]:
        """Train epochs ``start_epoch .. epochs-1``; ``reduce`` sums metrics over processes."""
        log = MetricsLog(self.output_dir, self.tensorboard) if self.is_main and self.output_dir else None
        if log is not None:
            log.truncate_after("epoch", self.start_epoch)
        try:
            for epoch in range(self.start_epoch, self.epochs):
                start = time.perf_counter()
                lr = cosine_lr(self.init_lr, epoch, self.epochs)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                try:
                    loss = train_epoch(self.fc, self.optimizer, train_batches(epoch), reduce, self.progress,
                                       desc=f"linear epoch {epoch + 1}/{self.epochs}", epoch=epoch + 1)
                except NonFiniteLoss as exc:
                    last = f"{self.state_path} (epoch {epoch})" if epoch and self.state_path else "none"
                    raise UserError(f"linear probe: {exc}; stopped, the epoch is not saved; last good state: {last}") from None
                # evaluation uses the bare classifier: processes may hold different numbers of val batches
                metrics = evaluate(self.classifier, val_batches(), reduce)
                row = {"epoch": epoch + 1, "loss": loss, "lr": lr, **metrics, "seconds": time.perf_counter() - start}
                self.history.append(row)
                if log is not None:
                    log.record(row, epoch + 1, prefix="linear/")
                    atomic_torch_save({"epoch": epoch + 1, "fc": self.classifier.state_dict(),
                                       "optimizer": self.optimizer.state_dict(), "history": self.history,
                                       "identity": self.identity}, self.state_path)
                    fault_point("epoch-end")
                if self.is_main and self.progress:
                    tqdm.write(f"linear epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  lr {lr:.4g}  "
                               f"top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%")
        finally:
            if log is not None:
                log.close()
        return self.history

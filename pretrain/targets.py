"""Where the loss's targets come from: the paper's hypothesis (Sec. 5) and its hub (Sec. 6, Fig. 3).

- ``online``: z of the same forward pass, behind the stop-gradient (SimSiam).
- ``alternation``: eta_x pre-computed by the encoder as it is before a block of k SGD steps, cached,
  then k steps against those targets (Sec. 5, multi-step alternation; k = 1 is SimSiam's schedule).
- ``expectation``: eta_x kept per image as a moving average, eta_x <- m eta_x + (1 - m) F(T'(x))
  (Sec. 5, expectation over augmentations; the paper runs it without predictor, m = 0.8).
- ``momentum_encoder``: z from an exponential moving average of the encoder, BYOL's target network,
  its momentum raised from its base to 1 by a cosine over the training steps.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.distributed as dist

from simsiam_eval.distributed import world
from simsiam_eval.errors import UserError

TARGET_KINDS = ("online", "alternation", "expectation", "momentum_encoder")


class OnlineTargets:
    """SimSiam: the targets are the z of the same forward pass (the loss applies the stop-gradient)."""

    block_size = 1

    def prepare(self, encoder: nn.Module, block: Sequence) -> None:
        """Nothing to pre-compute."""

    def targets(self, zs: Sequence[torch.Tensor], views: Sequence[torch.Tensor], indices: torch.Tensor,
                position: int) -> list[torch.Tensor]:
        return list(zs)

    def after_step(self, encoder: nn.Module, step: int) -> None:
        """Nothing to update."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""


class AlternationTargets(OnlineTargets):
    """Targets for the next ``steps`` batches, computed before the first of them (0: one epoch)."""

    def __init__(self, steps: int) -> None:
        self.block_size = steps
        self.cached: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def prepare(self, encoder: nn.Module, block: Sequence) -> None:
        device = next(encoder.parameters()).device
        self.cached = [[encoder(view.to(device)) for view in views] for views, _ in block]

    def targets(self, zs, views, indices, position) -> list[torch.Tensor]:
        return self.cached[position]


class ExpectationTargets(OnlineTargets):
    """eta per image: on each visit eta <- m eta + (1 - m) z (z itself on the first visit), where z is
    the mean over the visit's views of their detached output; every view's target is the new eta."""

    def __init__(self, num_images: int, dim: int, momentum: float, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"target.average_momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.eta = torch.zeros(num_images, dim, device=device, dtype=dtype)
        self.seen = torch.zeros(num_images, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Apply the moving average to the images ``indices`` (one row each) and return their new eta."""
        indices = indices.to(self.eta.device)
        old, seen = self.eta[indices], self.seen[indices].unsqueeze(1)
        new = torch.where(seen, self.momentum * old + (1.0 - self.momentum) * z, z)
        self.eta[indices] = new
        self.seen[indices] = True
        return new

    def targets(self, zs, views, indices, position) -> list[torch.Tensor]:
        z = torch.stack([z.detach().to(self.eta.dtype) for z in zs]).mean(dim=0)
        local = len(indices)
        indices, z = _gather_all(indices.to(z.device), z)
        eta = self.update(indices, z)[_own_rows(local)]
        return [eta] * len(zs)

    def state_dict(self) -> dict:
        return {"eta": self.eta.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.eta.copy_(state["eta"])
        self.seen.copy_(state["seen"])


class MomentumEncoderTargets(OnlineTargets):
    """BYOL's target network: xi <- tau xi + (1 - tau) theta after every step, with
    tau = 1 - (1 - tau_base) (cos(pi step / total) + 1) / 2; it gets no gradient and runs in train mode
    (BatchNorm over the batch, as the online encoder)."""

    def __init__(self, encoder: nn.Module, base_momentum: float, total_steps: int) -> None:
        if not 0.0 <= base_momentum <= 1.0:
            raise UserError(f"target.momentum must be in [0, 1], got {base_momentum}")
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.base_momentum = base_momentum
        self.total_steps = max(1, total_steps)

    def momentum(self, step: int) -> float:
        """tau after ``step`` steps (0-based): tau_base at the start, 1 at the end."""
        return 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * step / self.total_steps) + 1.0) / 2.0

    @torch.no_grad()
    def targets(self, zs, views, indices, position) -> list[torch.Tensor]:
        return [self.encoder(view) for view in views]

    @torch.no_grad()
    def after_step(self, encoder: nn.Module, step: int) -> None:
        tau = self.momentum(step)
        for target, online in zip(self.encoder.parameters(), encoder.parameters()):
            target.mul_(tau).add_(online.detach(), alpha=1.0 - tau)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])


def _gather_all(indices: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's (indices, z), rank 0's rows first (the processes see different images)."""
    size = world()[1]
    if size == 1:
        return indices, z
    gathered_indices = [torch.empty_like(indices) for _ in range(size)]
    gathered_z = [torch.empty_like(z) for _ in range(size)]
    dist.all_gather(gathered_indices, indices)
    dist.all_gather(gathered_z, z)
    return torch.cat(gathered_indices), torch.cat(gathered_z)


def _own_rows(local: int) -> slice:
    """This process's rows of :func:`_gather_all`'s result."""
    rank = world()[0]
    return slice(rank * local, (rank + 1) * local)


def build_targets(target_cfg, stop_gradient: bool, encoder: nn.Module, num_images: int, dim: int,
                  total_steps: int, device: torch.device) -> OnlineTargets:
    """The target source the ``target`` section of a pretrain config asks for."""
    kind = target_cfg["kind"]
    if kind not in TARGET_KINDS:
        raise UserError(f"target.kind must be one of {', '.join(TARGET_KINDS)}, got {kind!r}")
    if kind != "online" and not stop_gradient:
        raise UserError(f"target.kind={kind} makes targets without gradient; loss.stop_gradient=false "
                        "applies to target.kind=online only")
    if kind == "alternation":
        if target_cfg["steps"] < 0:
            raise UserError(f"target.steps must be >= 1, or 0 for one epoch; got {target_cfg['steps']}")
        return AlternationTargets(target_cfg["steps"])
    if kind == "expectation":
        return ExpectationTargets(num_images, dim, target_cfg["average_momentum"], device)
    if kind == "momentum_encoder":
        return MomentumEncoderTargets(encoder, target_cfg["momentum"], total_steps)
    return OnlineTargets()


def batch_blocks(batches: Iterable, size: int) -> Iterator[list]:
    """Consecutive blocks of ``size`` batches (the last may be shorter); size 0: one block of all."""
    block: list = []
    for batch in batches:
        block.append(batch)
        if size and len(block) == size:
            yield block
            block = []
    if block:
        yield block

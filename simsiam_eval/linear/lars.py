"""LARS with the semantics of apex's LARC wrapping SGD (what the official main_lincls runs).

For each parameter with a gradient, where both ||w|| and ||g|| are non-zero:

    local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
    g <- (g + weight_decay * w) * local_lr            (clip=False, the official setting)
    g <- (g + weight_decay * w) * min(local_lr / lr, 1)  (clip=True, apex's own default)

then plain SGD with momentum (no weight decay: it was folded in above). Where a norm is zero the
gradient is used as is and no weight decay is applied, exactly as apex does. ``exclude_1d``
(DINO/BarlowTwins style) leaves 1-d parameters (biases, BN) out of both the adaptation and the
weight decay.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD + momentum with a layer-wise trust ratio; defaults = main_lincls (trust 0.001, clip False)."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, clip: bool = False,
                 exclude_1d: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0 and trust_coefficient > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, clip=clip, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = self._scaled_gradient(p, group)
                state = self.state[p]
                if group["momentum"] != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(update)
                    update = buf
                p.add_(update, alpha=-group["lr"])
        return loss

    @staticmethod
    def _scaled_gradient(p: torch.Tensor, group: dict) -> torch.Tensor:
        """The gradient after apex LARC's adaptation (a new tensor; p.grad is left untouched)."""
        grad = p.grad
        if group["exclude_1d"] and p.ndim <= 1:
            return grad
        param_norm, grad_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
        if param_norm == 0 or grad_norm == 0:
            return grad
        wd = group["weight_decay"]
        local_lr = group["trust_coefficient"] * param_norm / (grad_norm + wd * param_norm + group["eps"])
        if group["clip"]:
            local_lr = torch.clamp(local_lr / group["lr"], max=1.0)
        return (grad + wd * p) * local_lr

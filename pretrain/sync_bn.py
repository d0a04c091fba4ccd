"""Synchronised BatchNorm on every device: torch's SyncBatchNorm on GPUs, an all-reduce twin on CPU.

torch's SyncBatchNorm refuses CPU modules under DDP; ``AllReduceBatchNorm`` computes the same
statistics (sum, sum of squares and count, all-reduced differentiably over the process group),
so multi-process CPU runs (gloo) train like one process with the whole batch. Both conversions keep
the parameter and buffer objects, so an optimiser built before the conversion still trains them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

# What a conversion hands over from the old module to the new one: the objects themselves, not copies.
_SHARED_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class _AllReduceSum(torch.autograd.Function):
    """Sum over all processes, differentiable: each input's gradient is the sum of every process's
    output gradient. (``torch.distributed.nn.functional.all_reduce`` does this too but is deprecated;
    this uses only the public ``dist.all_reduce``, available in every torch the package supports.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all processes."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() // channels])])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels:2 * channels] / count - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _convert_to_all_reduce(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm):
        converted = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats)
        for name in _SHARED_TENSORS:
            setattr(converted, name, getattr(module, name))
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, _convert_to_all_reduce(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer synchronised across processes: SyncBatchNorm on CUDA, the twin on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_to_all_reduce(model)

"""Every torch.distributed helper: set-up (torchrun env, NCCL on GPU, gloo on CPU), world info,
all-reduces, the round-robin gather and the rank agreement; each is a no-op in a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from simsiam_eval.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the local GPU when there is one, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but no CUDA GPU is available (use device=auto or cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if requested == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{requested}' (use auto, cpu or cuda)")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (or run as a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, chosen)


def barrier() -> None:
    """Wait for every process (no-op outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def all_gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """All-gather rows embedded round-robin (rank r holds items r, r+W, ...) back into item order."""
    size = world()[1]
    per_rank = -(-total // size)
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: len(local)] = local
    if dist.get_backend() == "nccl":
        padded = padded.cuda()
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded)
    stacked = torch.stack(gathered, dim=1).cpu()  # (per_rank, world, ...): row i*W + r
    return stacked.reshape(per_rank * size, *local.shape[1:])[:total]


def all_ranks_agree(flag: bool) -> bool:
    """True on every process when ``flag`` is True on every process (``flag`` itself in a single one)."""
    size = world()[1]
    if size == 1:
        return flag
    value = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def loss_is_finite(loss: torch.Tensor, step: int, every_on_gpu: int = 10) -> bool:
    """False when ``loss`` is NaN or Inf on any process. Every step is checked on the CPU; on a GPU only
    every ``every_on_gpu``-th (each check waits for the device), so a bad step is seen up to that late.
    A collective under torch.distributed: every process calls it at the same steps."""
    if loss.device.type == "cuda" and step % every_on_gpu:
        return True
    return all_ranks_agree(bool(torch.isfinite(loss.detach())))


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

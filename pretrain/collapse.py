"""The collapse monitor of the paper (Sec. 4.1): std of the l2-normalised output, per channel."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the batch std of z/||z||: ~1/sqrt(dim) when healthy, -> 0 on collapse."""
    with torch.no_grad():
        return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def healthy_std(dim: int) -> float:
    """The reference value 1/sqrt(dim) of a zero-mean isotropic output."""
    return 1.0 / math.sqrt(dim)


def is_collapsed(std: float, dim: int, ratio: float) -> bool:
    return std < ratio * healthy_std(dim)

"""The collapse monitor of the paper (Sec. 4.1): std of the l2-normalised output, per channel.

The projector ends in an affine-free BatchNorm, which re-standardises every channel over the batch.
A batch that has collapsed onto one point still shows a residual std: if B-1 outputs coincide and
one differs, every entry of z/||z|| becomes +-1/sqrt(dim), with the outlier's sign flipped, and the
(unbiased) std per channel is 2/sqrt(B) / sqrt(dim) ("the floor"): 0.09/sqrt(dim) at the paper's
batch 512, where the paper's curve reads ~0, but 0.5/sqrt(dim) at batch 16. Collapse is therefore
judged against the floor of the batch actually used.
"""
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


def collapsed_floor(batch: int) -> float:
    """std x sqrt(dim) of a batch collapsed to one point but for one outlier, after the output BN."""
    return 2.0 / math.sqrt(batch)


def collapse_threshold(dim: int, batch: int, ratio: float) -> float:
    """Below this std, training has collapsed: ``ratio`` of the way from the floor up to 1/sqrt(dim)."""
    floor = collapsed_floor(batch)
    return (floor + ratio * (1.0 - floor)) * healthy_std(dim)


def is_collapsed(std: float, dim: int, batch: int, ratio: float) -> bool:
    return std < collapse_threshold(dim, batch, ratio)

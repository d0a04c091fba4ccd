"""SimSiam's loss D(p, sg(z)) and the ablations of the paper (Sec. 4, Table/Fig. 2-5)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

SIMILARITIES = ("cosine", "cross_entropy")


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def cross_entropy_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -softmax(z) . log softmax(p) over channels, averaged over the batch."""
    return -(F.softmax(z, dim=-1) * F.log_softmax(p, dim=-1)).sum(dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                 similarity: str = "cosine", symmetric: bool = True, stop_gradient: bool = True) -> torch.Tensor:
    """L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2 (symmetric), or D(p1, sg(z2)) (asymmetric)."""
    if similarity == "cosine":
        distance = negative_cosine
    elif similarity == "cross_entropy":
        distance = cross_entropy_similarity
    else:
        raise ValueError(f"unknown similarity '{similarity}' (choose from {', '.join(SIMILARITIES)})")
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    if not symmetric:
        return distance(p1, z2)
    return 0.5 * distance(p1, z2) + 0.5 * distance(p2, z1)


def paired_views_loss(ps: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], similarity: str = "cosine",
                      symmetric: bool = True, stop_gradient: bool = True) -> torch.Tensor:
    """The mean of :func:`simsiam_loss` over the pairs of views (1st with 2nd, 3rd with 4th, ...):
    with two pairs per image and ``symmetric=False``, the paper's "asymmetric 2x" (Sec. 4.6)."""
    if len(ps) != len(zs) or len(ps) % 2:
        raise ValueError(f"expected pairs of views, got {len(ps)} predictions and {len(zs)} targets")
    losses = [simsiam_loss(ps[i], ps[i + 1], zs[i], zs[i + 1], similarity=similarity, symmetric=symmetric,
                           stop_gradient=stop_gradient) for i in range(0, len(ps), 2)]
    return torch.stack(losses).mean()

"""The weighted kNN vote (InstDisc / DINO ``knn_classifier``), in the order it runs.

1. Features are L2-normalised, so a dot product is a cosine similarity (:func:`l2_normalize`).
2. Each query's k most similar training features are found (``search.py``; made exact by ``certify.py``).
3. Each neighbour votes for its class with weight exp(sim / T), or 1 in ``uniform`` mode; a class's
   score is the sum of its neighbours' weights (:func:`knn_vote`).
4. Classes are ranked by score, ties to the lower class index (:func:`top_classes`).
5. Top-1 and top-5 accuracy; top-5 looks at the min(5, k) best classes (:func:`topk_accuracy`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from simsiam_eval.errors import UserError
from simsiam_eval.knn.defaults import WEIGHTINGS


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32): their dot products are cosine similarities."""
    return F.normalize(x.float(), dim=1)


def knn_vote(sims: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float,
             weighting: str = "exp") -> torch.Tensor:
    """Class scores (Q, C) float64 from neighbour similarities and labels (Q, k), best neighbour first."""
    if weighting == "exp":
        weights = (sims.double() / temperature).exp()
    elif weighting == "uniform":
        weights = torch.ones_like(sims, dtype=torch.float64)
    else:
        raise UserError(f"unknown kNN weighting '{weighting}' (choose from {', '.join(WEIGHTINGS)})")
    scores = torch.zeros(len(sims), num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, labels.long(), weights)


def top_classes(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes by descending score (equal scores: lower class index first) and their scores."""
    ordered = scores.sort(dim=1, descending=True, stable=True)
    return ordered.indices, ordered.values


def topk_accuracy(ranking: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent); top-5 counts the min(5, k, classes) best classes."""
    top5 = min(5, k, ranking.shape[1])
    hits = ranking[:, :top5] == targets.unsqueeze(1)
    return 100.0 * hits[:, 0].sum().item() / len(hits), 100.0 * hits.any(dim=1).sum().item() / len(hits)

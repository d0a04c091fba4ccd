"""Batches of the cached linear probe, streamed from the feature cache.

The training set is ``views`` feature tensors (N, D), as the cache holds them: float32, or float16
memory-mapped from disk (ImageNet: 1.28M x 2048 x 2 bytes = 5.2 GB a view). Nothing is loaded whole:
each batch gathers its rows (one view per image, drawn per epoch), converts them to float32 and moves
them to the device, and the pages read are handed back to the page cache (simsiam_eval/mapped.py), so
the resident memory stays at a few batches whatever the size of the cache.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from simsiam_eval.mapped import MappedPages

Batch = tuple[torch.Tensor, torch.Tensor]


class CachedViews:
    """Epochs over cached views: a seeded permutation of the images and one seeded view per image."""

    def __init__(self, views: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device, subset: np.ndarray | None = None) -> None:
        """``subset``: indices of the images trained on (low-shot), or None for all of them."""
        self.views, self.labels = list(views), labels
        self.rows = None if subset is None else torch.as_tensor(subset, dtype=torch.int64)
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.pages = [MappedPages(view) for view in self.views]

    def __len__(self) -> int:
        return len(self.labels) if self.rows is None else len(self.rows)

    def gather(self, images: torch.Tensor, view_of: torch.Tensor) -> torch.Tensor:
        """float32 rows of ``images`` (indices into the data set), each from its view ``view_of``."""
        out = torch.empty(len(images), self.views[0].shape[1], dtype=torch.float32)
        for view, features in enumerate(self.views):
            at = (view_of == view).nonzero().squeeze(1)
            if len(at):
                out[at] = features[images[at]].float()
        return out

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The training batches of ``epoch`` (same order and views for the same seed and epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self)
        order = torch.randperm(n, generator=generator)
        view = torch.randint(len(self.views), (n,), generator=generator)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            images = idx if self.rows is None else self.rows[idx]
            features = self.gather(images, view[idx])
            self.release()
            yield features.to(self.device, non_blocking=True), self.labels[images].to(self.device)

    def release(self) -> None:
        for pages in self.pages:
            pages.release()


def sequential_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                       device: torch.device) -> Iterator[Batch]:
    """``features`` (any float dtype, possibly memory-mapped) in order, as float32 batches on ``device``."""
    pages = MappedPages(features)
    for start in range(0, len(labels), batch_size):
        rows = features[start:start + batch_size].float()
        pages.release()
        yield rows.to(device, non_blocking=True), labels[start:start + batch_size].to(device)

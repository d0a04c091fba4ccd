"""Batches of the cached linear probe, streamed from the feature cache.

The training set is ``views`` feature tensors (N, D), as the cache holds them: float32, or float16
memory-mapped from disk (ImageNet: 1.28M x 2048 x 2 bytes = 5.2 GB a view). Nothing is loaded whole:
each batch gathers its rows (one view per image, drawn per epoch; read with pread from a mapped file,
simsiam_eval/mapped.py, one batch ahead in a background thread), converts them to float32 and moves
them to the device, so the resident memory stays at a few batches whatever the size of the cache.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch

from simsiam_eval.mapped import MappedTensor

Batch = tuple[torch.Tensor, torch.Tensor]


class CachedViews:
    """Epochs over cached views: a seeded permutation of the images and one seeded view per image."""

    def __init__(self, views: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device, subset: np.ndarray | None = None) -> None:
        """``subset``: indices of the images trained on (low-shot), or None for all of them."""
        self.views, self.labels = list(views), labels
        self.rows = None if subset is None else torch.as_tensor(subset, dtype=torch.int64)
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.sources = [MappedTensor(view) for view in self.views]

    def __len__(self) -> int:
        return len(self.labels) if self.rows is None else len(self.rows)

    def gather(self, images: torch.Tensor, view_of: torch.Tensor) -> torch.Tensor:
        """float32 rows of ``images`` (indices into the data set), each from its view ``view_of``."""
        out = torch.empty(len(images), self.views[0].shape[1], dtype=torch.float32)
        for view, source in enumerate(self.sources):
            at = (view_of == view).nonzero().squeeze(1)
            if len(at):
                out[at] = source.rows(images[at]).float()
        return out

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The training batches of ``epoch`` (same order and views for the same seed and epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self)
        order = torch.randperm(n, generator=generator)
        view = torch.randint(len(self.views), (n,), generator=generator)
        plan = []
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            plan.append((idx if self.rows is None else self.rows[idx], view[idx]))
        with ThreadPoolExecutor(max_workers=1) as ahead:  # reads the next batch while this one trains
            pending = ahead.submit(self.gather, *plan[0]) if plan else None
            for step, (images, _) in enumerate(plan):
                features = pending.result()
                if step + 1 < len(plan):
                    pending = ahead.submit(self.gather, *plan[step + 1])
                yield features.to(self.device, non_blocking=True), self.labels[images].to(self.device)


def sequential_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                       device: torch.device) -> Iterator[Batch]:
    """``features`` (any float dtype, possibly memory-mapped) in order, as float32 batches on ``device``."""
    source = MappedTensor(features)
    for start in range(0, len(labels), batch_size):
        rows = features[start:start + batch_size].float()
        source.release()
        yield rows.to(device, non_blocking=True), labels[start:start + batch_size].to(device)

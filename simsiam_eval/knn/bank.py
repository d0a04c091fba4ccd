"""The memory bank as L2-normalised float32 rows, whole or shard by shard.

A bank small enough (:data:`RESIDENT_BYTES` in float32) is normalised once and kept. A larger one
(ImageNet: 1.28M x 2048 = 10.5 GB in float32) stays as it is given, typically float16 memory-mapped
from disk, and every pass over it normalises one shard of :data:`SHARD_BYTES` at a time: the search,
the exact re-ranking's gathers and its whole-bank scans never hold more than a shard in float32, and
a memory-mapped bank is read without keeping its pages (gathers by pread, shards released after use:
simsiam_eval/mapped.py).
A row is normalised by the same function wherever it is read (:func:`~simsiam_eval.knn.vote.l2_normalize`,
row by row), so a shard and a gather give bit-identical rows.
"""
from __future__ import annotations

from typing import Iterator

import torch

from simsiam_eval.knn.vote import l2_normalize
from simsiam_eval.mapped import MappedTensor

RESIDENT_BYTES = 2 << 30  # normalise and keep banks up to 2 GiB of float32 (ImageNet-100 at 2048-d: 1 GiB)
SHARD_BYTES = 256 << 20   # rows per pass over a larger bank: 256 MiB of float32


class FeatureBank:
    """Bank rows ``features`` (N, D), any float dtype, L2-normalised to float32 on demand."""

    def __init__(self, features: torch.Tensor, shard_rows: int | None = None, normalized: bool = False) -> None:
        """``shard_rows``: rows per shard (default: the whole bank if it fits :data:`RESIDENT_BYTES`,
        else :data:`SHARD_BYTES`); ``normalized``: the rows are unit float32 already (used as they are)."""
        if features.ndim != 2:
            raise ValueError(f"a feature bank is (N, D), got shape {tuple(features.shape)}")
        self.features, self.normalized = features, normalized
        self.n, self.dim = features.shape
        row_bytes = 4 * max(self.dim, 1)
        if shard_rows is None:
            shard_rows = self.n if self.n * row_bytes <= RESIDENT_BYTES else SHARD_BYTES // row_bytes
        self.shard_rows = max(1, min(shard_rows, self.n))
        self._source = MappedTensor(features)
        self._resident = self._normalize(features) if self.shard_rows >= self.n else None

    def __len__(self) -> int:
        return self.n

    @property
    def resident(self) -> bool:
        """Whether the whole bank is held normalised in memory (one shard)."""
        return self._resident is not None

    def _normalize(self, rows: torch.Tensor) -> torch.Tensor:
        """Unit float32 rows (a copy, unless ``normalized``); mapped pages read for them are released."""
        if self.normalized:
            return rows
        unit = l2_normalize(rows)
        self._source.release()
        return unit

    def shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, normalised float32 rows) of each shard, in order."""
        if self._resident is not None:
            yield 0, self._resident
            return
        for start in range(0, self.n, self.shard_rows):
            yield start, self._normalize(self.features[start:start + self.shard_rows])

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Normalised float32 rows at ``indices`` (any shape; a trailing D is added)."""
        if self._resident is not None:
            return self._resident[indices]
        flat = indices.reshape(-1)
        return self._normalize(self._source.rows(flat)).reshape(*indices.shape, self.dim)


def as_bank(bank: torch.Tensor | FeatureBank) -> FeatureBank:
    """``bank`` itself, or an already L2-normalised float32 tensor as a resident bank."""
    return bank if isinstance(bank, FeatureBank) else FeatureBank(bank, shard_rows=len(bank), normalized=True)

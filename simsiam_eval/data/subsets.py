"""Labelled subsets of a training set for low-shot evaluation: a balanced per-class draw, a list read
from a file (the published ImageNet 1%/10% lists: one image name per line), and a hash naming the subset."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from simsiam_eval.errors import UserError


def balanced_subset(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction x class size) images of every class (halves up, at least 1),
    drawn without replacement by a numpy Generator seeded with ``seed``: the same labels, fraction and
    seed give the same indices, whatever the number of processes."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"label_fraction must be in (0, 1] (0 = all labels), got {fraction}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise UserError("a label subset needs a non-empty training set")
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    generator = np.random.default_rng(seed)
    chosen = [generator.choice(order[start:start + count], size=max(1, math.floor(fraction * count + 0.5)),
                               replace=False)
              for start, count in zip(starts, counts)]
    return np.sort(np.concatenate(chosen))


def _name_index(dataset: Dataset) -> dict[str, int | None]:
    """File name -> index for an ImageFolder (also ``class/name``); None marks a name several classes share."""
    index: dict[str, int | None] = {}
    for i, (path, _) in enumerate(dataset.samples):
        parts = Path(path).parts
        index[f"{parts[-2]}/{parts[-1]}"] = i
        index[parts[-1]] = None if parts[-1] in index else i
    return index


def subset_from_file(path: str | Path, dataset: Dataset) -> np.ndarray:
    """Sorted indices of the images a subset file lists, one per line: file names (``n01440764_10026.JPEG``
    or ``class/name``) for ImageFolder data sets, integer indices for array data sets (CIFAR, MNIST).
    Blank lines are skipped; an unknown or repeated entry is a UserError naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable subset file ({exc})") from None
    names = _name_index(dataset) if hasattr(dataset, "samples") else None
    chosen: dict[int, int] = {}  # index -> line number
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry:
            continue
        if names is not None:
            index = names.get(entry, -1)
            if index is None:
                raise UserError(f"{path}, line {number}: '{entry}' names images in several classes; write class/name")
        else:
            index = int(entry) if entry.isdigit() else -1
        if not 0 <= index < len(dataset):
            kind = "image of" if names is not None else "index into"
            raise UserError(f"{path}, line {number}: '{entry}' is not an {kind} the training set "
                            f"({len(dataset)} images)")
        if index in chosen:
            raise UserError(f"{path}, line {number}: '{entry}' is listed twice (first on line {chosen[index]})")
        chosen[index] = number
    if not chosen:
        raise UserError(f"{path}: the subset file lists no images")
    return np.array(sorted(chosen), dtype=np.int64)


def subset_hash(indices: Sequence[int] | np.ndarray) -> str:
    """sha256 (hex) of the sorted indices as little-endian int64: the subset's name in records."""
    return hashlib.sha256(np.sort(np.asarray(indices, dtype="<i8")).tobytes()).hexdigest()

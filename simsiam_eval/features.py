"""The one feature extractor and cache: frozen backbone in eval mode -> pool5 features.

kNN, the linear probe (cached mode), the pretraining kNN monitor and the demo all call
:func:`dataset_features`. Extraction is batched (tqdm), fp32 (the official precision) unless
``precision`` names a deviation (fp16 autocast on CUDA, bf16 with channels_last on the CPU), and
under torchrun each process embeds every ``world_size``-th image, then all processes gather the full set. Features of a
*checkpoint* (identified by its sha256) are cached on disk, keyed by the checkpoint, the data set
(spec + content fingerprint), the transform's repr, the view seed and the numeric precision.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from simsiam_eval.atomic import atomic_torch_save, atomic_write_json
from simsiam_eval.data.specs import DatasetSpec, open_dataset, prepare_dataset
from simsiam_eval.distributed import all_gather_rows, all_ranks_agree, barrier, world
from simsiam_eval.errors import UNREADABLE_FILE_ERRORS, UserError, one_line
from simsiam_eval.fault_points import fault_point
from simsiam_eval.models import pool5
from simsiam_eval.precision import FP32, autocast, memory_format

CACHE_FORMAT = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container, which torch.load can memory-map
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# A bad entry: what a damaged file raises (simsiam_eval.errors), or TypeError for one that is not a dict.
UNREADABLE_CACHE_ERRORS = (*UNREADABLE_FILE_ERRORS, TypeError)


@dataclass
class FeatureSet:
    """Features (N, D) on the CPU, labels (N,) int64, and the class names of the data set.

    Features are float32, or as the cache stores them (float16 with ``cache_dtype`` float16),
    memory-mapped from the cache file: a consumer converts what it needs (kNN shard by shard)."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_dir() -> Path:
    """``$SIMSIAM_EVAL_CACHE`` or ``~/.cache/simsiam-eval/features``."""
    env = os.environ.get("SIMSIAM_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "simsiam-eval" / "features"




class SeededViews(Dataset):
    """A data set whose random transform is re-seeded per (seed, index): the same view every time."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + index)
            return self.dataset[index]


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256,
                     workers: int = 4, precision: str = FP32, progress: bool = True,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """pool5 features and labels of every item of ``dataset`` (in order), float32 on the CPU.

    ``precision`` (simsiam_eval/precision.py) is fp32 (official), amp-fp16 (CUDA) or cpu-bf16 (bf16 autocast,
    channels_last model and images). The model is switched to eval mode for the extraction; every
    submodule gets its mode back after.
    Under torch.distributed every process must call this; all of them receive the full set.
    """
    if len(dataset) == 0:
        raise UserError(f"{desc}: the data set is empty")
    rank, size = world()
    local = Subset(dataset, range(rank, len(dataset), size)) if size > 1 else dataset
    loader = DataLoader(local, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    features, label_tensor, done = None, torch.empty(len(local), dtype=torch.int64), 0
    layout = memory_format(precision)
    if layout != torch.contiguous_format:
        model.to(memory_format=layout)
    try:
        for images, targets in tqdm(loader, desc=desc, disable=not progress or rank != 0,
                                    unit="batch", leave=False):
            with autocast(precision):
                out = pool5(model, images.to(device, non_blocking=True).contiguous(memory_format=layout))
            if features is None:  # one (N, D) tensor filled in place: no per-batch tensors kept alive
                features = torch.empty(len(local), out.shape[1])
            features[done:done + len(out)] = out
            label_tensor[done:done + len(out)] = torch.as_tensor(targets, dtype=torch.int64)
            done += len(out)
    finally:
        for module, training in modes:
            module.training = training
    if size > 1:
        features, label_tensor = all_gather_rows(features, len(dataset)), all_gather_rows(label_tensor, len(dataset))
    return features, label_tensor


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of a data set's content listing: its size, classes, file paths or pixels, labels."""
    digest = hashlib.sha256()
    digest.update(f"{len(dataset)}\n{json.dumps(list(getattr(dataset, 'classes', [])))}\n".encode())
    samples = getattr(dataset, "samples", None)
    images = getattr(dataset, "images", None)
    if samples is not None:
        for path, target in samples:
            digest.update(f"{path}\t{target}\n".encode())
    elif isinstance(images, np.ndarray):
        digest.update(np.ascontiguousarray(images).data)
    digest.update(np.asarray(getattr(dataset, "targets", []), dtype=np.int64).tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Feature files ``<root>/<key>.pt`` (+ a readable ``<key>.json``), written atomically."""

    def __init__(self, root: str | os.PathLike, dtype: str = "float32") -> None:
        if dtype not in CACHE_DTYPES:
            raise UserError(f"unknown feature cache dtype '{dtype}' (use {' or '.join(CACHE_DTYPES)})")
        self.root, self.dtype = Path(root), dtype

    @staticmethod
    def optional(enabled: bool, root: str | os.PathLike | None, dtype: str) -> "FeatureCache | None":
        """The cache at ``root`` (default: :func:`default_cache_dir`), or None when caching is off."""
        return FeatureCache(root or default_cache_dir(), dtype) if enabled else None

    @staticmethod
    def key(description: dict) -> str:
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features as stored, memory-mapped; labels) of ``key``, or None when the entry is missing or
        unreadable. Mapped, an ImageNet-size entry (1.28M x 2048) costs no memory until it is read.

        An unreadable entry (truncated, damaged, not ours, missing fields) is recomputed, never trusted;
        a line on stderr says which file was discarded and why.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with open(path, "rb") as head:
                mapped = head.read(4) == ZIP_MAGIC  # anything else is read (and refused) without mapping
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
            features, labels = blob["features"], blob["labels"]
            if not (isinstance(features, torch.Tensor) and features.is_floating_point() and features.ndim == 2
                    and isinstance(labels, torch.Tensor) and labels.shape == features.shape[:1]):
                raise TypeError("features (N, D) float and labels (N,) expected")
        except UNREADABLE_CACHE_ERRORS as exc:
            print(f"feature cache: discarded {path} ({type(exc).__name__}: {one_line(exc)}); recomputing",
                  file=sys.stderr, flush=True)
            return None
        return features, labels

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, description: dict) -> None:
        blob = {"format": CACHE_FORMAT, "features": features.to(CACHE_DTYPES[self.dtype]),
                "labels": labels, "description": json.dumps(description, sort_keys=True)}
        atomic_write_json(description, self.root / f"{key}.json")  # first: the .pt file commits the entry
        fault_point("cache-entry")
        atomic_torch_save(blob, self.path(key))

    def round(self, features: torch.Tensor) -> torch.Tensor:
        """Features as they read back from the cache: a fresh run and a cache hit give equal numbers."""
        return features.to(CACHE_DTYPES[self.dtype]).float()


def feature_std(features: torch.Tensor, chunk_rows: int = 65536) -> float:
    """How spread a feature bank is: the paper's collapse std (mean over channels of the std of f/||f||, as
    pretrain/collapse.py measures the heads' output) x sqrt(dim), read in chunks of rows (a bank may be larger
    than memory). 0 when every row points the same way: the backbone has collapsed. Pool5 being non-negative,
    even a random init reads well below 1 (0.12 for the study's network on Fashion-MNIST)."""
    rows, dim = features.shape
    if rows < 2:
        raise ValueError(f"the spread of features needs at least 2 rows, got {rows}")
    total = torch.zeros(dim, dtype=torch.float64, device=features.device)
    squares = torch.zeros_like(total)
    for start in range(0, rows, chunk_rows):
        unit = F.normalize(features[start:start + chunk_rows].double(), dim=1)
        total += unit.sum(dim=0)
        squares += unit.square().sum(dim=0)
    variance = (squares - total.square() / rows).clamp_min(0) / (rows - 1)
    return float(variance.sqrt().mean() * math.sqrt(dim))


def load_frozen_backbone(checkpoint: str, fmt: str = "auto", arch: str | None = None,
                         device: torch.device | str = "cpu") -> tuple[dict, nn.Module, str]:
    """Read a checkpoint through the one loader; return its record part, the backbone (eval mode,
    no gradients) and the ``model_id`` that keys its cached features."""
    from simsiam_eval.checkpoints import build_backbone, read_checkpoint

    ckpt = read_checkpoint(checkpoint, fmt, arch)
    backbone = build_backbone(ckpt, device).requires_grad_(False)
    return ckpt.record(), backbone, f"{ckpt.sha256}:{ckpt.arch}:{ckpt.stem}:{ckpt.width}"


def dataset_features(model: nn.Module, spec: str | DatasetSpec, transform: Callable, device: torch.device,
                     model_id: str | None = None, cache: FeatureCache | None = None, view_seed: int | None = None,
                     batch_size: int = 256, workers: int = 4, precision: str = FP32, progress: bool = True,
                     dataset: Dataset | None = None) -> FeatureSet:
    """Features of the data set ``spec`` seen through ``transform``, from the cache when possible.

    ``model_id`` names the weights (the checkpoint's sha256 and arch); without it (a model in the
    middle of training) nothing is read from or written to disk. ``view_seed`` makes a random
    transform reproducible per image (augmented views of the cached linear probe). ``dataset``
    lets a caller pass the already opened data set of ``spec`` (same transform).
    """
    parsed = prepare_dataset(spec)
    if dataset is None:
        dataset = open_dataset(parsed, transform)
    classes = list(getattr(dataset, "classes", []))
    if len(dataset) == 0:
        raise UserError(f"{parsed}: the data set is empty")
    source = SeededViews(dataset, view_seed) if view_seed is not None else dataset
    key = description = None
    if cache is not None and model_id is not None:
        description = {"format": CACHE_FORMAT, "model": model_id, "dataset": str(parsed),
                       "fingerprint": dataset_fingerprint(dataset), "transform": repr(transform),
                       "view_seed": view_seed, "dtype": cache.dtype,
                       "precision": precision}
        key = FeatureCache.key(description)
        hit = cache.load(key)
        if all_ranks_agree(hit is not None):
            return FeatureSet(hit[0], hit[1], classes)
    features, labels = extract_features(model, source, device, batch_size, workers, precision, progress,
                                        desc=f"features {parsed}")
    if key is not None:
        features = cache.round(features)
        if world()[0] == 0:
            cache.save(key, features, labels, description)
        barrier()
    return FeatureSet(features, labels, classes)


def check_same_classes(train: Sequence[str], val: Sequence[str], train_spec: str, val_spec: str) -> None:
    """Train and val must name the same classes in the same order (labels index into them)."""
    if list(train) != list(val):
        only_train = sorted(set(train) - set(val))[:3]
        only_val = sorted(set(val) - set(train))[:3]
        detail = (f"only in train: {only_train}, only in val: {only_val}" if only_train or only_val
                  else "same names in a different order")
        raise UserError(f"train ({train_spec}) and val ({val_spec}) have different class sets "
                        f"({len(train)} vs {len(val)} classes; {detail})")

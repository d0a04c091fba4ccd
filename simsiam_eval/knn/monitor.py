"""kNN accuracy of an encoder in the middle of pretraining (same extractor and vote as ``knn``).

Nothing is cached on disk: the weights change every epoch. The opened data sets are kept in memory
between calls, so each call only pays for the forward passes. ``image_size`` 0 evaluates at the
native size of the ``train`` (bank) images, which are then used as they are (no resize, no crop),
as in MoCo's CIFAR kNN monitor.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Mapping

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from simsiam_eval.data.sizes import evaluation_size, evaluation_transform, print_upsampling_note
from simsiam_eval.data.specs import open_dataset, prepare_dataset
from simsiam_eval.distributed import world
from simsiam_eval.errors import UserError
from simsiam_eval.features import check_same_classes, dataset_features, feature_std
from simsiam_eval.knn.classify import knn_classify
from simsiam_eval.precision import FP32


@lru_cache(maxsize=4)
def _open(spec: str, transform) -> Dataset:
    return open_dataset(prepare_dataset(spec), transform)


@lru_cache(maxsize=4)
def _transform(requested: int, train: str, val: str):
    """The eval transform at the monitor's size (said once when it upsamples): one object per
    (size, data), so that the opened data sets stay cached across epochs."""
    size = evaluation_size(requested, train)
    if world()[0] == 0:
        print_upsampling_note(train, size)
    return evaluation_transform(size, train, val)


def run_knn_monitor(backbone: nn.Module, knn_cfg: Mapping, device: torch.device, image_size: int,
                    batch_size: int = 256, workers: int | None = None, precision: str = FP32) -> dict[str, float]:
    """``{"knn_top1", "knn_top5"}`` (percent) of ``backbone``'s pool5 features, first k of ``knn_cfg.k``, and
    ``knn_feature_std``, the spread of the bank's features (simsiam_eval/features.py feature_std).

    ``knn_cfg`` is the ``knn`` section of the pretrain config (train, val, k, temperature);
    ``image_size`` 0 means the native size of ``knn_cfg.train``'s images (224 for a folder); ``precision``
    is the pretraining's (simsiam_eval/precision.py). The
    backbone is switched to eval mode and every submodule gets its mode back afterwards. Call it on
    every process under torchrun: extraction is split across processes and gathered.
    """
    if not knn_cfg["train"] or not knn_cfg["val"]:
        raise UserError("the kNN monitor needs knn.train and knn.val dataset specs")
    ks = knn_cfg["k"] if isinstance(knn_cfg["k"], (list, tuple)) else [knn_cfg["k"]]
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    transform = _transform(image_size, knn_cfg["train"], knn_cfg["val"])
    sets = {}
    for split in ("train", "val"):
        spec = knn_cfg[split]
        sets[split] = dataset_features(backbone, spec, transform, device, batch_size=batch_size, workers=workers,
                                       precision=precision, progress=False, dataset=_open(spec, transform))
    check_same_classes(sets["train"].classes, sets["val"].classes, knn_cfg["train"], knn_cfg["val"])
    result = knn_classify(sets["train"].features, sets["train"].labels, sets["val"].features, sets["val"].labels,
                          ks=ks, temperature=knn_cfg["temperature"])
    first = result.metrics[int(ks[0])]
    metrics = {"knn_top1": first["top1"], "knn_top5": first["top5"]}
    if len(sets["train"]) > 1:
        metrics["knn_feature_std"] = feature_std(sets["train"].features)
    return metrics

"""Build the record every evaluation produces.

Shape: ``{protocol, metrics{...}, checkpoint{path, sha256, arch, format[, name, epochs]}, data{...},
settings{...}, seed, trial, versions{...}, git, started, seconds[, tags, id]}``. Tables read only
records. Conventions the tables rely on:

- ``protocol``: ``knn``, ``linear``, ``transfer`` (one trial) or ``transfer-aggregate``.
- ``metrics``: flat ``{name: float}``, accuracies in percent: ``top1``, ``top5`` (kNN may add
  ``top1_k20`` etc.); linear probes: ``top1``/``top5`` of the best epoch (main_lincls' ``best_acc1``),
  ``best_epoch``, ``last_top1``/``last_top5`` of the last epoch; detection ``AP``, ``AP50``, ``AP75`` for boxes and ``mask_AP``, ``mask_AP50``,
  ``mask_AP75`` for masks.
- ``settings`` of linear probes: ``label_fraction``, ``subset_seed``, ``subset_file``, ``subset_size``
  and ``subset_hash`` (None for all labels); a low-shot record's ``trial`` is its subset seed.
- ``data.name``: a short dataset name for tables (``shapes``, ``cifar10``, ``voc07``, ``voc0712``,
  ``coco``); without it the table uses ``data.dataset``, ``data.task``, ``data.val`` or ``data.train``.
- ``checkpoint.name``: a display name (default: derived from the path); ``checkpoint.epochs``:
  pretraining epochs, if known. ``tags``: free labels to select records by.
"""
from __future__ import annotations

import datetime as dt
from pathlib import PurePath
from typing import Any, Mapping, Sequence

from simsiam_eval.provenance import git_revision, versions

RECORD_KEYS = ("protocol", "metrics", "checkpoint", "data", "settings", "seed", "trial",
               "versions", "git", "started", "seconds")
_CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".pkl", ".safetensors", ".bin", ".tar", ".ckpt")


def build_record(protocol: str, metrics: Mapping[str, float], checkpoint: Mapping[str, Any],
                 data: Mapping[str, Any], settings: Mapping[str, Any], started: float, seconds: float,
                 seed: int | None = None, trial: int | None = None,
                 tags: Sequence[str] = (), name: str | None = None) -> dict:
    """A complete record; ``started`` is a POSIX timestamp, ``seconds`` the wall time; ``name`` labels
    the checkpoint's row in tables (``checkpoint.name``)."""
    return {
        "protocol": protocol,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "checkpoint": {**checkpoint, "name": name} if name else dict(checkpoint),
        "data": dict(data),
        "settings": dict(settings),
        "seed": seed,
        "trial": trial,
        "versions": versions(),
        "git": git_revision(),
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(float(seconds), 3),
        "tags": list(tags),
    }


def checkpoint_name(record: Mapping[str, Any]) -> str:
    """The checkpoint's display name: ``checkpoint.name``, else ``<folder>/<file stem>`` of its path
    (a spec such as ``random:resnet18:cifar:32`` is kept as it is)."""
    checkpoint = record.get("checkpoint") or {}
    if checkpoint.get("name"):
        return str(checkpoint["name"])
    path = str(checkpoint.get("path") or "")
    if not path or (":" in path and "/" not in path.split(":", 1)[0] and len(path.split(":", 1)[0]) > 1):
        return path or "unknown"
    pure = PurePath(path)
    stem = pure.name
    for suffix in _CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{pure.parent.name}/{stem}" if pure.parent.name else stem


_SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test", "eval"}


def dataset_name(spec: str) -> str:
    """A short name for a dataset spec: its kind (``cifar10:DIR@test`` -> ``cifar10``), or for an
    ImageFolder the folder's name (its parent's for split folders: ``/data/imagenet/val`` -> ``imagenet``)."""
    from simsiam_eval.data.specs import parse_spec

    parsed = parse_spec(spec)
    if parsed.kind != "imagefolder":
        return parsed.kind
    path = parsed.path
    return path.parent.name if path.name.lower() in _SPLIT_FOLDERS and path.parent.name else path.name


def record_dataset(record: Mapping[str, Any]) -> str:
    """The short dataset name tables use (see the module docstring)."""
    data = record.get("data") or {}
    for key in ("name", "dataset", "task"):
        if data.get(key):
            return str(data[key])
    for key in ("val", "test", "train"):
        if data.get(key):
            return dataset_name(str(data[key]))
    return "unknown"

"""Records and published numbers as one long frame: one row per (checkpoint, protocol, dataset, metric).

Columns: ``name, epochs, protocol, labels, dataset, metric, value, trial, source, published``;
``labels`` is empty, or names the training labels of a low-shot linear probe (``10% labels``, ``labels
of FILE``), whose subset seeds are its trials. Published rows (``published`` True) also carry ``std``
and ``n`` when the source states them (their ``value`` is already a mean over ``n`` trials).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import pandas as pd

from simsiam_eval.config import packaged_config_dir
from simsiam_eval.errors import UserError
from simsiam_eval.results.records import checkpoint_name, record_dataset

COLUMNS = ["name", "epochs", "protocol", "labels", "dataset", "metric", "value", "trial", "source", "published"]
REFERENCE_REQUIRED = ["name", "protocol", "dataset", "metric", "value", "source"]
# A study file (a suite's ``study:``, simsiam_eval/suite/study.py): the paper's verdict per variant, not table rows.
STUDY_COLUMNS = ["experiment", "name", "paper_setting", "value", "verdict", "source"]


def record_epochs(record: dict) -> float:
    """Pretraining epochs of the evaluated checkpoint, if the record knows them (else NaN)."""
    checkpoint = record.get("checkpoint") or {}
    for key in ("epochs", "epoch"):
        if checkpoint.get(key) is not None:
            return float(checkpoint[key])
    return float("nan")


def record_labels(record: dict) -> str:
    """Which training labels a linear probe learnt from: ``""`` (all), ``10% labels`` (a balanced
    ``label_fraction`` draw, whatever its seed) or ``labels of FILE`` (a ``subset_file``)."""
    settings = record.get("settings") or {}
    if settings.get("label_fraction"):
        return f"{100 * float(settings['label_fraction']):g}% labels"
    if settings.get("subset_file"):
        return f"labels of {Path(settings['subset_file']).name}"
    return ""


def normalized_metrics(record: dict) -> dict:
    """The record's metrics in today's names. Linear records written before the best and the last epoch
    were both kept hold ``top1``/``top5`` of the last epoch and ``best_top1``: they are read as
    ``top1`` (best) and ``last_top1``/``last_top5`` (the best epoch's top-5 was not kept)."""
    metrics = dict(record["metrics"])
    if record["protocol"] in ("linear", "linear-cached") and "best_top1" in metrics and "best_epoch" not in metrics:
        metrics["last_top1"], metrics["top1"] = metrics["top1"], metrics.pop("best_top1")
        if "top5" in metrics:
            metrics["last_top5"] = metrics.pop("top5")
    return metrics


def measurements(records: Iterable[dict]) -> pd.DataFrame:
    """One row per metric of each record."""
    rows = [{"name": checkpoint_name(rec), "epochs": record_epochs(rec), "protocol": rec["protocol"],
             "labels": record_labels(rec), "dataset": record_dataset(rec), "metric": metric, "value": float(value),
             "trial": rec.get("trial"), "source": "this toolkit", "published": False}
            for rec in records for metric, value in normalized_metrics(rec).items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def reference_dir() -> Path:
    return packaged_config_dir() / "reference"


def is_study_file(path: Path) -> bool:
    """Whether a CSV's header is a study file's (:data:`STUDY_COLUMNS`)."""
    with open(path, newline="") as stream:
        return next(csv.reader(stream), []) == STUDY_COLUMNS


def reference_files() -> list[Path]:
    """The published-numbers CSVs shipped in ``configs/reference`` (its study files left out)."""
    return [path for path in sorted(reference_dir().glob("*.csv")) if not is_study_file(path)]


def load_reference(paths: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """Published numbers: CSVs with columns ``name, epochs, protocol, dataset, metric, value, std, n,
    source`` and optionally ``labels`` (``epochs``, ``std``, ``n``, ``labels`` may be empty); every row
    cites its source."""
    frames = []
    for path in reference_files() if paths is None else paths:
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a readable reference CSV ({exc})") from None
        missing = [c for c in REFERENCE_REQUIRED if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: reference CSV lacks columns {missing}")
        if frame["source"].isna().any():
            raise UserError(f"{path}: every reference row must cite its source")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=COLUMNS + ["std", "n"])
    frame = pd.concat(frames, ignore_index=True)
    for column in ("epochs", "std", "n"):
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    frame["labels"] = frame["labels"].fillna("").astype(str) if "labels" in frame else ""
    frame["trial"] = None
    frame["published"] = True
    return frame[COLUMNS + ["std", "n"]]


def with_reference(long: pd.DataFrame, mode: str = "auto", extra_files: Iterable[str | Path] = ()) -> pd.DataFrame:
    """Add published rows: ``auto`` those whose protocol and dataset occur in ``long``, ``all``, or ``none``.

    ``extra_files`` (the user's own reference CSVs) are always added.
    """
    if mode not in ("auto", "all", "none"):
        raise UserError(f"--reference must be auto, all or none, got {mode!r}")
    parts = []
    if mode != "none":
        published = load_reference()
        if mode == "auto":
            present = set(zip(long["protocol"], long["dataset"]))
            published = published[[pair in present for pair in zip(published["protocol"], published["dataset"])]]
        parts.append(published)
    if extra_files:
        parts.append(load_reference(list(extra_files)))
    parts = [frame for frame in parts if not frame.empty]
    return pd.concat([long, *parts], ignore_index=True) if parts else long

"""Several fine-tuning trials of one recipe: seeds, folders, resume, and mean +- sample std.

Layout of a run folder::

    run_config.yaml        the resolved Detectron2 config every trial starts from
    weights/               the converted checkpoint
    trial1/ ... trialN/    one Detectron2 OUTPUT_DIR per trial (log.txt, config.yaml, checkpoints)
      final_results.json   written by the trainer after the final evaluation: the trial is finished
      record.json          the trial's result record
    aggregate.json         the record of the mean over the finished trials

A finished trial (``final_results.json`` present) is never run again; an unfinished one is started again
and Detectron2's checkpointer resumes it from its last checkpoint.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from simsiam_eval.errors import UserError
from simsiam_eval.results.aggregate import aggregate as aggregate_long

RESULTS_FILE = "final_results.json"
RECORD_FILE = "record.json"
# Detectron2 result sections -> record metric prefixes (records.py: AP, AP50, ... and mask_AP, ...).
_SECTIONS = {"bbox": "", "segm": "mask_"}
_KEPT = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class Trial:
    index: int   # 1-based
    seed: int
    folder: Path

    @property
    def results_file(self) -> Path:
        return self.folder / RESULTS_FILE

    @property
    def record_file(self) -> Path:
        return self.folder / RECORD_FILE

    def finished(self) -> bool:
        return self.results_file.is_file()


def plan_trials(output_dir: Path, count: int, base_seed: int = 0) -> list[Trial]:
    """Trials 1..count with seeds base_seed, base_seed + 1, ..., each in ``output_dir/trial<i>``."""
    if count < 1:
        raise UserError(f"--trials must be at least 1, got {count}")
    return [Trial(i + 1, base_seed + i, Path(output_dir) / f"trial{i + 1}") for i in range(count)]


def flatten_results(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Detectron2's ``{"bbox": {"AP": ...}, "segm": {...}}`` as record metrics (``AP``, ``mask_AP``,
    ...); per-class entries and undefined (NaN) values left out."""
    flat = {}
    for section, prefix in _SECTIONS.items():
        for key in _KEPT:
            value = (results.get(section) or {}).get(key)
            if value is not None and math.isfinite(float(value)):
                flat[prefix + key] = float(value)
    return flat


def read_trial_metrics(trial: Trial) -> dict[str, float]:
    try:
        stored = json.loads(trial.results_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{trial.results_file}: unreadable trial result ({exc}); delete it to run the trial again") from None
    return flatten_results(stored.get("results") or {})


def aggregate(per_trial: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, sample standard deviation (n - 1; None for a single trial) and n, computed by
    the tables' aggregation (``simsiam_eval.results.aggregate``) so both agree by construction."""
    long = pd.DataFrame([{"metric": key, "value": float(value), "published": False}
                         for metrics in per_trial for key, value in metrics.items()],
                        columns=["metric", "value", "published"])
    stats = aggregate_long(long, ["metric"])
    return {row.metric: {"mean": float(row.mean), "std": None if math.isnan(row.std) else float(row.std),
                         "n": int(row.n)} for row in stats.itertuples()}


def aggregate_metrics(summary: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The aggregate record's metrics: ``<metric>`` = mean and ``<metric>_std`` = sample std."""
    flat = {}
    for key, stats in summary.items():
        flat[key] = stats["mean"]
        if stats["std"] is not None:
            flat[f"{key}_std"] = stats["std"]
    return flat


def format_summary(summary: Mapping[str, Mapping[str, float]]) -> str:
    """One line per metric: ``AP50   75.50 +- 0.20  (5 trials)``."""
    lines = []
    for key, stats in summary.items():
        spread = f"{stats['std']:.2f}" if stats["std"] is not None else "n/a"
        lines.append(f"{key:<10} {stats['mean']:7.2f} ± {spread:<5} ({stats['n']} trial{'s' if stats['n'] > 1 else ''})")
    return "\n".join(lines)


def run_trials(trials: Iterable[Trial], train: Callable[[Trial], None],
               publish: Callable[[Trial, dict[str, float]], None],
               log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Train every unfinished trial (``train`` resumes from the trial's folder), publish the record of
    every finished trial that has none yet, and return each trial's metrics."""
    results = []
    for trial in trials:
        if trial.finished():
            log(f"trial {trial.index} (seed {trial.seed}): finished earlier, skipped ({trial.folder})")
        else:
            log(f"trial {trial.index} (seed {trial.seed}): training in {trial.folder}")
            train(trial)
            if not trial.finished():
                raise UserError(f"trial {trial.index} ended without {trial.results_file}; see {trial.folder / 'log.txt'}")
        metrics = read_trial_metrics(trial)
        if not trial.record_file.is_file():
            publish(trial, metrics)
        results.append(metrics)
    return results

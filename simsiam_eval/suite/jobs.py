"""A suite's jobs: (checkpoint, evaluation, data set) with their resolved configs and stable keys.

A job's key is the sha256 of what decides its result: the checkpoint (the file's sha256, or the text of
a ``random:`` spec), the protocol, its resolved config without the keys that only say where outputs
go or how they are shown, and the data specs. The runner stores it in each record's settings as
``suite_job`` and skips a job whose key the results database holds.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from simsiam_eval.config import Config, load_config
from simsiam_eval.errors import UserError
from simsiam_eval.provenance import sha256_file
from simsiam_eval.suite.spec import CheckpointEntry, Evaluation, PretrainRun, Suite, protocol_defaults

# Config keys that do not change a job's result: left out of its key.
NOT_IN_KEY = ("checkpoint", "train", "val", "output_dir", "output", "results", "name", "tags", "progress",
              "tensorboard", "quiet", "cache", "cache_dir", "workers", "resume", "dist_url",
              "search_precision")  # the kNN candidate matmul's precision: same predictions
SUITE_JOB = "suite_job"  # the settings entry of a record that holds its job's key


@dataclass
class Job:
    """One unit of work: an evaluation of a checkpoint on a data set, or a pretraining run."""

    name: str
    checkpoint: CheckpointEntry | None
    evaluation: Evaluation | None
    dataset: str | None
    config: Config
    key: str | None = None  # None while the checkpoint is not there
    pretrain: PretrainRun | None = None  # set for a pretraining job

    @property
    def protocol(self) -> str:
        return "pretrain" if self.pretrain else self.evaluation.protocol

    @property
    def data(self) -> dict[str, str]:
        return {k: self.config[k] for k in ("train", "val")} if self.dataset else {}


def job_name(*parts: str) -> str:
    """A file-name-safe job name: ``mine-knn-shapes``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(p for p in parts if p)).strip("-")


def job_dir(suite: Suite, job: Job) -> Path:
    """``jobs/<job name>/<key prefix>``: a job whose settings or checkpoint change gets a fresh folder
    (a linear probe's saved state would otherwise belong to the old settings)."""
    return suite.output_dir / "jobs" / job.name / job.key[:12]


def evaluation_config(suite: Suite, checkpoint: CheckpointEntry, evaluation: Evaluation,
                      data: dict[str, str]) -> Config:
    """The protocol config of one job: the evaluation's keys, then what the suite sets."""
    defaults = protocol_defaults(evaluation.protocol)
    values = {**evaluation.keys, **data, "checkpoint": checkpoint.source, "format": checkpoint.format,
              "results": str(suite.results), "name": checkpoint.name,
              "tags": [suite.name, evaluation.name, *checkpoint.tags]}
    for key, value in (("progress", False), ("quiet", True), ("cache_dir", suite.cache_dir)):
        if key in defaults and key not in evaluation.keys and value != "":
            values[key] = value
    cfg = load_config(None, defaults, values=values, values_source=f"{suite.path}: evaluations.{evaluation.name}")
    if evaluation.protocol == "knn":
        from simsiam_eval.knn.evaluate import apply_preset

        cfg = apply_preset(cfg, set(evaluation.keys))
    return cfg


def checkpoint_identity(entry: CheckpointEntry, memo: dict) -> str | None:
    """The file's sha256 (computed once per file and size/mtime), the text of a ``random:`` spec, or None
    when the file is not there (yet)."""
    path = Path(entry.source)
    if entry.source.startswith("random:") and not path.exists():
        return entry.source
    if not path.is_file():
        return None
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in memo:
        memo[memo_key] = sha256_file(path)
    return memo[memo_key]


def compute_key(job: Job, memo: dict) -> str | None:
    """The job's key, or None while its checkpoint is missing."""
    if job.pretrain is not None:
        identity = "pretrain"
    else:
        identity = checkpoint_identity(job.checkpoint, memo)
        if identity is None:
            return None
    settings = {k: v for k, v in job.config.to_dict().items() if k not in NOT_IN_KEY}
    text = json.dumps({"checkpoint": identity, "protocol": job.protocol, "settings": settings, "data": job.data},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _triples(suite: Suite) -> Iterable[tuple[CheckpointEntry, Evaluation, str | None]]:
    checkpoints = {c.name: c for c in suite.checkpoints}
    if suite.jobs is not None:
        for entry in suite.jobs:
            yield checkpoints[entry["checkpoint"]], suite.evaluations[entry["evaluation"]], entry.get("dataset")
        return
    for checkpoint in suite.checkpoints:
        for evaluation in suite.evaluations.values():
            for dataset in evaluation.datasets or (None,):
                yield checkpoint, evaluation, dataset


def expand_jobs(suite: Suite, memo: dict | None = None) -> list[Job]:
    """Pretraining jobs first, then checkpoints x evaluations x their data sets (or the explicit ``jobs``)."""
    memo = {} if memo is None else memo
    jobs = [Job(job_name("pretrain", run.name), None, None, None, run.config, pretrain=run) for run in suite.pretrain]
    for checkpoint, evaluation, dataset in _triples(suite):
        name = job_name(checkpoint.name, evaluation.name, dataset or "")
        data = suite.datasets[dataset] if dataset else {}
        jobs.append(Job(name, checkpoint, evaluation, dataset, evaluation_config(suite, checkpoint, evaluation, data)))
    names = [job.name for job in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{suite.path}: jobs with the same name: {', '.join(repeated)} (rename a checkpoint, "
                        f"evaluation or data set)")
    for job in jobs:
        job.key = compute_key(job, memo)
    return jobs


def select_jobs(jobs: list[Job], only: str) -> list[Job]:
    """The jobs ``--only`` names: comma-separated job names or key prefixes (8+ hex digits)."""
    wanted = [item.strip() for item in only.split(",") if item.strip()]
    chosen = []
    for item in wanted:
        matches = [j for j in jobs if j.name == item or (len(item) >= 8 and (j.key or "").startswith(item))]
        if not matches:
            raise UserError(f"--only: no job named {item!r} (jobs: {', '.join(j.name for j in jobs)})")
        chosen += [j for j in matches if j not in chosen]
    return chosen


def recorded_keys(records: Iterable[dict]) -> set[str]:
    """The job keys the records hold (``settings.suite_job``)."""
    return {r["settings"][SUITE_JOB] for r in records if (r.get("settings") or {}).get(SUITE_JOB)}


def job_state(job: Job, done: set[str]) -> str:
    """``done``, ``left``, ``waiting for pretrain NAME`` or ``checkpoint missing``."""
    if job.pretrain is not None:
        return "done" if job.pretrain.final_checkpoint.is_file() else "left"
    if job.key is None:
        return f"waiting for pretrain {job.checkpoint.pretrain}" if job.checkpoint.pretrain else "checkpoint missing"
    return "done" if job.key in done else "left"

"""Run one job in this process: its protocol's run function, its record into the suite's database.

Each record's settings carry the job's key (``suite_job``) and its tags the suite's name. A job whose
record file (``jobs/<job>/<key prefix>/record.json``) holds its key already, written just before a kill, is
published from that file instead of being run again.
"""
from __future__ import annotations

import json
from pathlib import Path

from simsiam_eval.config import Config
from simsiam_eval.results.store import publish_record, read_records
from simsiam_eval.suite.jobs import SUITE_JOB, Job, job_dir
from simsiam_eval.suite.spec import Suite

RECORD_FILE = "record.json"
SUITE_JOB_PART = "suite_job_part"  # settings entry of a transfer trial record: the key of its job


def _stored_record(path: Path, key: str) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if (record.get("settings") or {}).get(SUITE_JOB) == key else None


def _evaluate(job: Job, suite: Suite) -> str:
    from simsiam_eval.distributed import cleanup, init_distributed

    folder = job_dir(suite, job)
    record_file = folder / RECORD_FILE
    record = _stored_record(record_file, job.key)
    if record is None:
        if job.protocol == "knn":
            from simsiam_eval.knn.evaluate import run_knn as run
        else:
            from simsiam_eval.linear.evaluate import run_linear as run
        info = init_distributed(job.config.device)
        try:
            record = run(Config({**job.config, "output_dir": str(folder)}), info)
        finally:
            cleanup()
        if not info.is_main:
            return "done (not the main process)"
        record["settings"][SUITE_JOB] = job.key
    publish_record(record, record_file, suite.results)
    return f"top-1 {record['metrics']['top1']:.2f}%"


def _transfer(job: Job, suite: Suite) -> str:
    """``run_transfer`` into the job's own database, then its trial and aggregate records (the aggregate
    last: it marks the job done) into the suite's."""
    from transfer.run import run_transfer

    folder = job_dir(suite, job)
    job_db = folder / "results.db"
    aggregate = run_transfer(Config({**job.config, "output_dir": str(folder), "results": str(job_db)}))
    for record in read_records(job_db):
        final = record["protocol"] == "transfer-aggregate"
        record["settings"][SUITE_JOB if final else SUITE_JOB_PART] = job.key
        publish_record(record, None, suite.results)
    shown = [f"{k} {v:.1f}" for k, v in aggregate["metrics"].items() if k in ("AP50", "AP", "AP75")]
    return ", ".join(shown) or "done"


def _pretrain(job: Job, suite: Suite) -> str:
    from pretrain.train import train

    train(job.pretrain.config)
    final = job.pretrain.final_checkpoint
    if not final.is_file():
        raise RuntimeError(f"pretraining ended without its final checkpoint {final}")
    return f"checkpoint {final}"


RUNNERS = {"knn": _evaluate, "linear": _evaluate, "transfer": _transfer, "pretrain": _pretrain}


def execute_job(job: Job, suite: Suite) -> str:
    """Run ``job`` here (all its output to the caller's streams); return a one-line summary."""
    return RUNNERS[job.protocol](job, suite)

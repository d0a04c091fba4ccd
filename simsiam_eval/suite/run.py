"""The suite runner and its local launcher.

Jobs run in sequence, in this process (``nproc`` 1) or each as ``torchrun --nproc_per_node N -m
simsiam_eval suite SUITE.yaml --only JOB`` (``nproc`` > 1). A job whose key the suite's database holds is
skipped ("done"); a failing job is reported with its one-line reason (its traceback goes to
``logs/<job>.log``) and the others go on. The return value is the number of failed jobs.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from simsiam_eval.errors import UserError, one_line
from simsiam_eval.results.store import read_records
from simsiam_eval.suite.execute import execute_job
from simsiam_eval.suite.jobs import Job, compute_key, expand_jobs, job_state, recorded_keys, select_jobs
from simsiam_eval.suite.spec import Suite

MAX_EXIT_STATUS = 100


def suite_records(suite: Suite) -> list[dict]:
    """Every record of the suite's database (none before its first job)."""
    return read_records(suite.results) if suite.results.is_file() else []


def log_path(suite: Suite, job: Job) -> Path:
    rank = int(os.environ.get("RANK", "0"))
    return suite.output_dir / "logs" / (f"{job.name}.log" if rank == 0 else f"{job.name}.rank{rank}.log")


def job_table(jobs: list[Job], done: set[str]) -> str:
    """The job list with each job's state (``--dry-run``)."""
    header = ("job", "checkpoint", "protocol", "data", "state", "key")
    rows = [header] + [(job.name, job.checkpoint.name if job.checkpoint else "-", job.protocol,
                        job.dataset or (job.config.data.train if job.pretrain else job.config.get("task", "")),
                        job_state(job, done), (job.key or "-")[:12]) for job in jobs]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def _failure(error: BaseException) -> str:
    if isinstance(error, UserError):
        return one_line(error)
    return f"{type(error).__name__}: {one_line(error)}"


def run_here(job: Job, suite: Suite) -> str:
    """Run the job in this process, its output and any traceback appended to its log file."""
    log = log_path(suite, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job.name} (key {job.key})", flush=True)
        try:
            return execute_job(job, suite)
        except BaseException:
            traceback.print_exc(file=stream)
            raise


def torchrun_command(suite: Suite, job: Job, nproc: int) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m simsiam_eval suite SUITE [key=value ...] --only JOB``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "simsiam_eval", "suite", str(suite.path), *suite.overrides, "--only", job.name]


def run_torchrun(job: Job, suite: Suite, nproc: int) -> str:
    """Run the job as ``nproc`` processes through torchrun; its output goes to the job's log file."""
    log = log_path(suite, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream:
        code = subprocess.call(torchrun_command(suite, job, nproc), stdout=stream, stderr=subprocess.STDOUT)
    if code != 0:
        raise UserError(f"torchrun exited with status {code}")
    return f"done ({nproc} processes)"


def _say(message: str) -> None:
    """Print on the main process only (under torchrun every process runs the suite)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


def _blocked(job: Job) -> str:
    if job.checkpoint.pretrain:
        return f"its checkpoint comes from pretrain {job.checkpoint.pretrain}, which did not finish"
    return f"checkpoint not found: {job.checkpoint.source}"


def finish(suite: Suite, jobs: list[Job], failed: list[str], only: str | None) -> int:
    """The closing line, the tables and plots (of a whole-suite run), and the exit status."""
    _say(f"suite {suite.name}: {len(jobs) - len(failed)} of {len(jobs)} job(s) done"
         + (f", {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    if not only:
        from simsiam_eval.suite.outputs import write_outputs

        write_outputs(suite, suite_records(suite), jobs)
    return min(len(failed), MAX_EXIT_STATUS)


def run_suite_on_slurm(suite: Suite, only: str | None = None) -> int:
    """``--launcher slurm``: the jobs that are left, submitted through submitit in two waves (pretraining
    runs, then the evaluations, whose checkpoints the runs write); return the number that failed."""
    from simsiam_eval.suite.launchers import launch_suite_jobs

    memo: dict = {}
    jobs = select_jobs(expand_jobs(suite, memo), only) if only else expand_jobs(suite, memo)
    failed = []
    for wave in ([job for job in jobs if job.pretrain], [job for job in jobs if not job.pretrain]):
        done = recorded_keys(suite_records(suite))
        left = []
        for job in wave:
            if job.key is None:
                job.key = compute_key(job, memo)
            state = job_state(job, done)
            if state == "left":
                left.append(job)
            elif state != "done":
                failed.append(job.name)
                _say(f"{job.name}: FAILED: {_blocked(job)}")
        results = launch_suite_jobs(suite.path, [job.name for job in left], suite.launcher,
                                    suite.output_dir / "logs" / "slurm", suite.overrides)
        for name, result in results.items():
            _say(f"{name}: {'done' if result.ok else 'FAILED: ' + result.reason} "
                 f"(job {result.scheduler_id}, logs {result.log_folder})")
            if not result.ok:
                failed.append(name)
    return finish(suite, jobs, failed, only)


def run_suite(suite: Suite, only: str | None = None, dry_run: bool = False, nproc: int = 1) -> int:
    """Run the jobs that are left; return the number that failed (at most 100)."""
    memo: dict = {}
    jobs = expand_jobs(suite, memo)
    if only:
        jobs = select_jobs(jobs, only)
    done = recorded_keys(suite_records(suite))
    if dry_run:
        print(f"suite {suite.name}: {len(jobs)} job(s), results {suite.results}\n{job_table(jobs, done)}")
        return 0
    failed = []
    for index, job in enumerate(jobs, 1):
        label = f"[{index}/{len(jobs)}] {job.name}"
        if job.key is None:  # a pretraining run may have written the checkpoint since
            job.key = compute_key(job, memo)
        state = job_state(job, done)
        if state == "done":
            _say(f"{label}: done")
            continue
        if state == "left":
            _say(f"{label}: running ({job.protocol})")
        started = time.perf_counter()
        try:
            if state != "left":
                raise UserError(_blocked(job))
            summary = run_torchrun(job, suite, nproc) if nproc > 1 else run_here(job, suite)
        except Exception as error:  # any failure: report it, go on with the others
            failed.append(job.name)
            log = log_path(suite, job)
            _say(f"{label}: FAILED: {_failure(error)}" + (f" (log: {log})" if log.is_file() else ""))
            continue
        _say(f"{label}: {summary} ({time.perf_counter() - started:.0f} s)")
    return finish(suite, jobs, failed, only)

"""The Slurm launcher on CPU: submitit's local executor runs toy commands (done, failed, timed out and
requeued), and the options become the expected submitit arguments and sbatch lines."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from simsiam_eval.errors import UserError
from simsiam_eval.suite.launchers import (SlurmOptions, executor_parameters, launch_suite_jobs, make_executor, submit_jobs,
                                         suite_job_command)

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="submitit not installed (pip install 'simsiam-eval[slurm]')")
LOCAL = SlurmOptions(cluster="local", gpus_per_node=0, cpus_per_task=1, timeout_min=1)

# Appends its parent's pid (the submitit task) to the progress file; on its first run it then works
# "too long" (until the test sends the time-limit signal); a re-run sees the progress and finishes.
RESUMABLE = """
import os, pathlib, sys, time
progress = pathlib.Path(sys.argv[1])
runs = progress.read_text().split() if progress.exists() else []
progress.write_text(" ".join(runs + [str(os.getppid())]))
if not runs:
    time.sleep(60)
"""


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@needs_submitit
def test_local_jobs_are_run_and_a_failure_is_reported(tmp_path):
    commands = {name: python("import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ok')", str(tmp_path / name))
                for name in ("knn-a", "knn-b")}
    commands["linear/c"] = python("import sys; print('error: checkpoint c not found', file=sys.stderr); sys.exit(2)")
    results = submit_jobs(commands, LOCAL, tmp_path / "logs")

    assert [results[name].ok for name in commands] == [True, True, False]
    assert (tmp_path / "knn-a").read_text() == (tmp_path / "knn-b").read_text() == "ok"
    assert results["linear/c"].reason == "exit status 2: error: checkpoint c not found"
    assert results["linear/c"].log_folder == tmp_path / "logs" / "linear_c"
    for result in results.values():
        assert list(result.log_folder.glob(f"{result.scheduler_id}_0_log.out"))


def run_interrupted_once(tmp_path: Path, options: SlurmOptions):
    """Submit RESUMABLE; once it has started, send its task Slurm's time-limit warning (USR2, as
    submitit's local controller does on a time-out); return its result and progress file."""
    progress = tmp_path / "progress"
    results = {}
    waiting = threading.Thread(target=lambda: results.update(
        submit_jobs({"pretrain": python(RESUMABLE, str(progress))}, options, tmp_path / "logs")))
    waiting.start()
    deadline = time.monotonic() + 30
    while not progress.exists():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    os.kill(int(progress.read_text().split()[0]), signal.SIGUSR2)
    waiting.join(timeout=60)
    return results["pretrain"], progress


@needs_submitit
def test_a_timed_out_job_is_requeued_and_resumes(tmp_path):
    result, progress = run_interrupted_once(tmp_path, LOCAL)
    assert result.ok, result.reason
    first, second = progress.read_text().split()  # ran twice, in two task processes of one job
    assert first != second
    assert "Requeued job" in next(result.log_folder.glob("*_0_log.out")).read_text()


@needs_submitit
def test_a_job_out_of_requeues_is_reported_failed(tmp_path):
    result, _ = run_interrupted_once(tmp_path, dataclasses.replace(LOCAL, max_num_timeout=0))
    assert not result.ok
    assert "timed-out too many times" in result.reason


class FakeJob:
    def __init__(self, folder: Path, number: int) -> None:
        self.job_id = str(number)
        self.paths = type("Paths", (), {"folder": folder / str(number)})()

    def exception(self):
        return None


class FakeExecutor:
    """Records what submit_jobs asks of a submitit executor."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.parameters, self.submitted = folder, {}, []

    def update_parameters(self, **parameters) -> None:
        self.parameters.update(parameters)

    def submit(self, task):
        self.submitted.append((self.parameters["name"], task.command))
        return FakeJob(self.folder, len(self.submitted))


@needs_submitit
def test_options_become_submitit_parameters(tmp_path):
    options = SlurmOptions.from_section(
        {"partition": "learnfair", "nodes": 2, "gpus_per_node": 8, "mem_gb": 64, "timeout_min": 2880,
         "account": 1234, "extra": {"constraint": "volta32gb"}},
        ["qos=high", "array_parallelism=16", "extra.exclude=node7"])
    assert executor_parameters(options) == {
        "nodes": 2, "tasks_per_node": 1, "gpus_per_node": 8, "cpus_per_task": 10, "mem_gb": 64,
        "timeout_min": 2880, "slurm_partition": "learnfair", "slurm_account": "1234", "slurm_qos": "high",
        "slurm_array_parallelism": 16,
        "slurm_additional_parameters": {"requeue": True, "constraint": "volta32gb", "exclude": "node7"}}
    assert "slurm_partition" not in executor_parameters(SlurmOptions())
    no_requeue = SlurmOptions.from_section({}, ["extra.requeue=false"])
    assert executor_parameters(no_requeue)["slurm_additional_parameters"] == {}

    executor = FakeExecutor(tmp_path)
    commands = {"r18/knn/cifar": ["a"], "r18/linear/cifar": ["b"]}
    results = submit_jobs(commands, options, tmp_path / "logs", executor=executor)
    assert executor.submitted == [("r18/knn/cifar", ["a"]), ("r18/linear/cifar", ["b"])]
    assert all(result.ok for result in results.values())
    assert (tmp_path / "logs" / "r18_knn_cifar").resolve() == tmp_path / "1"  # named link to the job's folder


def test_bad_launcher_keys_are_user_errors():
    with pytest.raises(UserError, match="unknown launcher key 'gpus'"):
        SlurmOptions.from_section({"gpus": 8}, source="suite.yaml")
    with pytest.raises(UserError, match="'nodes' must be an integer >= 1"):
        SlurmOptions.from_section({}, ["nodes=0"])
    with pytest.raises(UserError, match="'cluster' must be one of"):
        SlurmOptions.from_section({"cluster": "pbs"})
    with pytest.raises(UserError, match="launcher' must be a mapping"):
        SlurmOptions.from_section(["slurm"])


def test_missing_submitit_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(UserError, match=r"pip install 'simsiam-eval\[slurm\]'"):
        make_executor(LOCAL, "logs")


@needs_submitit
def test_sbatch_lines(tmp_path, monkeypatch):
    """On a Slurm machine (a stand-in srun on PATH) the options become these #SBATCH lines."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions.from_section({"partition": "dev", "nodes": 2, "gpus_per_node": 8, "mem_gb": 64,
                                         "timeout_min": 120, "account": "proj", "qos": "high",
                                         "extra": {"constraint": "volta32gb"}})
    sbatch = make_executor(options, tmp_path / "logs")._executor._make_submission_file_text("run", "0")
    for line in ("--partition=dev", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=10",
                 "--mem=64GB", "--time=120", "--account=proj", "--qos=high", "--constraint=volta32gb",
                 "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in sbatch
    assert "#SBATCH --requeue\n" in sbatch


def test_suite_job_commands():
    assert suite_job_command("s.yaml", "j1", ["output_dir=x"]) == [
        sys.executable, "-m", "simsiam_eval", "suite", "s.yaml", "output_dir=x", "--only", "j1"]
    four_gpus = suite_job_command("s.yaml", "j1", options=SlurmOptions(gpus_per_node=4))
    assert four_gpus[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    two_nodes = suite_job_command("s.yaml", "j1", options=SlurmOptions(gpus_per_node=8, nodes=2))
    assert two_nodes[3:7] == ["--nnodes", "2", "--nproc_per_node", "8"]


@needs_submitit
def test_suite_jobs_are_launched_with_only(tmp_path):
    executor = FakeExecutor(tmp_path)
    results = launch_suite_jobs("s.yaml", ["j1", "j2"], LOCAL, tmp_path / "logs", ["output_dir=o"], executor=executor)
    assert sorted(results) == ["j1", "j2"]
    assert executor.submitted[1] == ("j2", [sys.executable, "-m", "simsiam_eval", "suite", "s.yaml", "output_dir=o",
                                            "--only", "j2"])


@needs_submitit
def test_multi_node_jobs_give_torchrun_the_rendezvous(monkeypatch):
    import submitit

    from simsiam_eval.suite.slurm_task import CommandTask

    node = type("Env", (), {"num_nodes": 2, "node": 1, "hostnames": ["gpu01", "gpu02"], "raw_job_id": "123456"})
    monkeypatch.setattr(submitit, "JobEnvironment", node)
    env = CommandTask(["true"], ".", nodes=2)._environment()
    assert (env["PET_NNODES"], env["PET_NODE_RANK"], env["PET_MASTER_ADDR"]) == ("2", "1", "gpu01")
    assert env["PET_MASTER_PORT"] == str(20000 + 123456 % 20000)
    assert "PET_NODE_RANK" not in CommandTask(["true"], ".")._environment()

"""The Slurm launcher: one submitit job per suite job (or one job array), each running that job's command
(``simsiam-eval suite SUITE.yaml --only JOB_ID``, or its torchrun form), requeued on timeout or
preemption, with its logs in ``log_dir/<job id>/``.

submitit is imported lazily (extra ``slurm``); ``cluster: local`` / ``debug`` run the same path on a
laptop or in tests through submitit's local and debug executors.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from simsiam_eval.config import parse_overrides
from simsiam_eval.errors import UserError

CLUSTERS = ("slurm", "local", "debug")
INSTALL_HINT = "pip install 'simsiam-eval[slurm]'"
_TRACE_RULE = "-" * 22 + "\n"


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """The suite file's ``launcher:`` section (every key optional); ``None`` leaves Slurm's default."""

    cluster: str = "slurm"  # slurm, or submitit's local / debug executor
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1  # > 1: the job's command is the torchrun form with one process per GPU
    cpus_per_task: int = 10
    mem_gb: float | None = None
    timeout_min: int = 1440
    account: str | None = None
    qos: str | None = None
    array: bool = False  # one job array instead of one Slurm job per suite job
    array_parallelism: int = 256  # at most this many array tasks run at once
    max_num_timeout: int = 3  # requeues after a time-out (preemptions do not count)
    extra: dict = dataclasses.field(default_factory=dict)  # more sbatch settings: {constraint: volta32gb}

    @classmethod
    def from_section(cls, section: Mapping | None, overrides: Iterable[str] = (),
                     source: str = "launcher section") -> SlurmOptions:
        """Options from the suite file's ``launcher:`` mapping, then ``key=value`` overrides (keys of the
        section, e.g. ``partition=dev`` or ``extra.constraint=volta32gb``)."""
        if section is not None and not isinstance(section, Mapping):
            raise UserError(f"{source}: 'launcher' must be a mapping of Slurm options, got {section!r}")
        values = {key: _checked(key, value, source) for key, value in (section or {}).items()}
        for key, text in parse_overrides(overrides).items():
            value = _parse_text(key, text)
            if key.startswith("extra."):
                values["extra"] = {**values.get("extra", {}), key[len("extra."):]: value}
            else:
                values[key] = _checked(key, value, "command line")
        return cls(**values)


_MINIMUM = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 1, "array_parallelism": 1,
            "max_num_timeout": 0}
_DEFAULTS = SlurmOptions()


def _parse_text(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"launcher key '{key}' (command line): cannot read the value {text!r}") from None


def _checked(key: str, value: Any, source: str) -> Any:
    """``value`` if it suits option ``key`` (numbers as text are fine for text options), else UserError."""
    fields = {field.name for field in dataclasses.fields(SlurmOptions)}
    if key not in fields:
        raise UserError(f"{source}: unknown launcher key '{key}' (known: {', '.join(sorted(fields))})")
    default = getattr(_DEFAULTS, key)
    problem = ""
    if value is None:
        problem = "" if default is None else "may not be empty"
    elif key == "cluster":
        problem = "" if value in CLUSTERS else f"must be one of {', '.join(CLUSTERS)}"
    elif key == "extra":
        scalar = (str, int, float, bool)
        ok = isinstance(value, Mapping) and all(isinstance(v, scalar) for v in value.values())
        problem = "" if ok else "must map sbatch option names to values, e.g. {constraint: volta32gb}"
        value = dict(value) if ok else value
    elif key == "array":
        problem = "" if isinstance(value, bool) else "must be true or false"
    elif key == "mem_gb":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        problem = "" if ok else "must be a positive number of GB"
    elif key in _MINIMUM:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= _MINIMUM[key]
        problem = "" if ok else f"must be an integer >= {_MINIMUM[key]}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # an account or partition that YAML read as a number
    elif not isinstance(value, str):
        problem = "must be text"
    if problem:
        raise UserError(f"{source}: launcher key '{key}' {problem}, got {value!r}")
    return value


def executor_parameters(options: SlurmOptions, name: str | None = None) -> dict[str, Any]:
    """Our options as arguments of ``submitit.AutoExecutor.update_parameters`` (unset ones left out).
    ``--requeue`` is asked for unless ``extra: {requeue: false}``."""
    sbatch_extra = {key: value for key, value in {"requeue": True, **options.extra}.items() if value is not False}
    parameters = {
        "name": name,
        "nodes": options.nodes,
        "tasks_per_node": 1,  # one command per node; torchrun starts the per-GPU processes
        "gpus_per_node": options.gpus_per_node,
        "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb,
        "timeout_min": options.timeout_min,
        "slurm_partition": options.partition,
        "slurm_account": options.account,
        "slurm_qos": options.qos,
        "slurm_array_parallelism": options.array_parallelism,
        "slurm_additional_parameters": sbatch_extra,
    }
    return {key: value for key, value in parameters.items() if value is not None}


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(f"the Slurm launcher needs submitit: {INSTALL_HINT}") from None
    return submitit


def make_executor(options: SlurmOptions, folder: str | Path):
    """A configured ``submitit.AutoExecutor`` writing its files to ``folder``."""
    submitit = _submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster,
                                         slurm_max_num_timeout=options.max_num_timeout,
                                         local_max_num_timeout=options.max_num_timeout)
    except RuntimeError as exc:  # no srun here
        raise UserError(f"launcher cluster '{options.cluster}': {exc} (cluster: local runs the jobs here)") from None
    executor.update_parameters(**executor_parameters(options))
    return executor


def suite_job_command(suite_file: str | Path, job_id: str, overrides: Sequence[str] = (),
                      options: SlurmOptions = _DEFAULTS) -> list[str]:
    """The command of one suite job: ``python -m simsiam_eval suite FILE --only ID``, through torchrun
    with one process per GPU when a node has several (``--standalone`` on one node; on several, the
    job's task gives torchrun the node rank and master address)."""
    command = ["-m", "simsiam_eval", "suite", str(suite_file), *overrides, "--only", job_id]
    if options.gpus_per_node <= 1 and options.nodes == 1:
        return [sys.executable, *command]
    rendezvous = ["--standalone"] if options.nodes == 1 else ["--nnodes", str(options.nodes)]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous,
            "--nproc_per_node", str(max(1, options.gpus_per_node)), *command]


def launch_suite_jobs(suite_file: str | Path, job_ids: Sequence[str], options: SlurmOptions, log_dir: str | Path,
                      overrides: Sequence[str] = (), executor=None) -> dict[str, JobResult]:
    """``--launcher slurm``: each given suite job as its own submitit job (or array task) running
    ``simsiam-eval suite SUITE --only JOB_ID`` with the suite's ``key=value`` overrides."""
    commands = {job_id: suite_job_command(suite_file, job_id, overrides, options) for job_id in job_ids}
    return submit_jobs(commands, options, log_dir, executor)


@dataclasses.dataclass(frozen=True)
class JobResult:
    """How one suite job ended under the launcher."""

    job_id: str
    ok: bool
    reason: str  # "" when ok; else the command's exit status and last error line, or why Slurm ended it
    scheduler_id: str  # Slurm job id (array: ARRAY_TASK), or the local job's process id
    log_folder: Path


def submit_jobs(commands: Mapping[str, Sequence[str]], options: SlurmOptions, log_dir: str | Path,
                executor=None) -> dict[str, JobResult]:
    """Submit one job per entry of ``commands`` (suite job id -> command), or one job array when
    ``options.array``; wait for all; return each job's result. Each job's logs land in
    ``log_dir/<job id>/``. ``executor``: an already configured submitit executor (default: made from
    ``options``)."""
    if not commands:
        return {}
    _submitit()
    from simsiam_eval.suite.slurm_task import CommandTask

    log_dir = Path(log_dir).absolute()
    folders = {job_id: log_dir / _folder_name(job_id) for job_id in commands}
    if len(set(folders.values())) != len(folders):
        raise UserError(f"suite job ids {sorted(commands)} collide as log folder names in {log_dir}")
    cwd = os.getcwd()
    jobs = {}
    if options.array:
        executor = executor or make_executor(options, log_dir / "arrays" / "%j")
        with executor.batch():
            for job_id, command in commands.items():
                jobs[job_id] = executor.submit(CommandTask(command, cwd, options.nodes))
    else:
        for job_id, command in commands.items():
            job_executor = executor or make_executor(options, folders[job_id])
            job_executor.update_parameters(name=job_id)
            jobs[job_id] = job_executor.submit(CommandTask(command, cwd, options.nodes))
    for job_id, job in jobs.items():
        if Path(job.paths.folder) != folders[job_id]:  # a shared folder (array, given executor): name it
            _link(folders[job_id], job.paths.folder)
        print(f"submitted {job_id}: {job.job_id} (logs: {folders[job_id]})", flush=True)
    return {job_id: _wait(job_id, job, folders[job_id]) for job_id, job in jobs.items()}


def _folder_name(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", job_id).lstrip(".") or "_"


def _link(name: Path, target: Path) -> None:
    """``name`` -> ``target`` as a relative symlink, replacing an older link (never a real folder)."""
    if name.is_symlink():
        name.unlink()
    if not name.exists():
        name.parent.mkdir(parents=True, exist_ok=True)
        name.symlink_to(os.path.relpath(target, name.parent), target_is_directory=True)


def _wait(job_id: str, job, log_folder: Path) -> JobResult:
    error = job.exception()  # waits for the job; None on success
    reason = "" if error is None else failure_reason(error)
    print(f"{job_id}: " + ("done" if error is None else f"failed: {reason}"), flush=True)
    return JobResult(job_id, error is None, reason, str(job.job_id), log_folder)


def failure_reason(error: BaseException) -> str:
    """One line: the last line of the job's traceback (the command's ``exit status N: <last error line>``,
    or e.g. submitit's ``timed-out too many times``), else the first line of submitit's message (job
    cancelled or killed)."""
    text = str(error)
    framed = text.split(_TRACE_RULE)  # submitit's FailedJobError: the job's traceback between two rules
    lines = [line.strip() for line in (framed[1] if len(framed) >= 3 else text).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(framed) < 3:
        return lines[0]
    name, _, message = lines[-1].partition(": ")
    name = name.rsplit(".", 1)[-1]
    return message if name == "CommandFailed" else f"{name}: {message}"

#!/usr/bin/env python
"""Kill a command with SIGKILL at random moments, re-run it to the end, compare with one uninterrupted run.

Each target is a tiny CPU run of one ``simsiam-eval`` command (deterministic: one thread, workers=0).
The tool runs it once uninterrupted (the reference), tracing the named fault points it passes
(simsiam_eval/fault_points.py), then ``--trials`` times interrupted: ``--kills`` SIGKILLs of a
``python -m simsiam_eval`` process group, each at a traced point (the process waits there to be killed)
or after a random delay, seeded; then one run without faults to the end. The reference and the final
runs call the command in this process (saving a torch start-up each). After every kill each
checkpoint, cache entry and JSON file present must read back whole. At the end every file of the
reference must be in the interrupted run's outputs with the same content (times, record ids and paths
left out; weights compared bit for bit), no file may be left over (a temporary file of a killed write,
a second record file), and the results database must hold the same records, each once. Bytes lost:
the size of the reference files that are missing or differ.

    python tools/fault_injection.py                         # short: 1 trial x 2 kills per target
    python tools/fault_injection.py --trials 8 --kills 3    # long (README figures)
    python tools/fault_injection.py --targets pretrain knn --seed 3 --work /tmp/fi --keep
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simsiam_eval import cli, fault_points  # noqa: E402
from simsiam_eval.data.shapes import CLASSES, ShapesSettings, write_shapes_dataset  # noqa: E402
from simsiam_eval.fault_points import POINT_ENV, REPORT_ENV, TRACE  # noqa: E402
from simsiam_eval.results.store import read_records  # noqa: E402

CHECKPOINT = "random:resnet18:cifar:8"
# Fields that differ between two runs of the same computation: times, ids, the resume point, and the
# git revision (a commit to the checkout while the tool runs).
VOLATILE = {"id", "started", "seconds", "timings", "images_per_sec", "resumed_from_epoch", "trial_records", "git"}
NOT_OUTPUTS = (".simsiam-eval.lock", "results.db-wal", "results.db-shm", "results.db-journal",  # not results
               "log.txt", "fault-report.txt", "suite.yaml")  # written by this tool
TIMEOUT_S = 900
STARTUP_S = 3.0  # about what importing torch takes on 2 cores


@dataclass
class Target:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (run folder, data folder) -> simsiam-eval arguments
    compared: tuple[str, ...] = ("out/**/*", "cache/**/*")  # globs of the outputs compared (in the run folder)
    exact: bool = True  # False: records and files compared by count, keys and types, not values
    detectron2: bool = False


def _pretrain(run: Path, data: Path) -> list[str]:
    return ["pretrain", "pretrain/shapes_cpu", f"output_dir={run / 'out'}", f"data.train=shapes:{data}/shapes@train",
            "epochs=3", "batch_size=8", "model.stem=cifar", "model.width=8", "model.dim=32", "model.pred_dim=8",
            "data.image_size=16", "workers=0", "progress=false", "tensorboard=false", "knn.every_n_epochs=0",
            "device=cpu", "deterministic=true"]


def _evaluation(command: str, run: Path, data: Path, *extra: str) -> list[str]:
    return [command, "--checkpoint", CHECKPOINT, "--train", f"shapes:{data}/shapes@train",
            "--val", f"shapes:{data}/shapes@val", "--workers", "0", "--no-progress", "--device", "cpu",
            "--output-dir", str(run / "out"), "--output", str(run / "out" / f"{command}.json"),
            "--cache-dir", str(run / "cache"), *extra]


def _linear(*mode: str) -> Callable[[Path, Path], list[str]]:
    return lambda run, data: _evaluation("linear", run, data, "--mode", *mode, "--epochs", "3", "--batch-size", "8",
                                         "--optimizer", "sgd", "--base-lr", "1.0", "tensorboard=false")


def _suite(run: Path, data: Path) -> list[str]:
    shapes = {"train": f"shapes:{data}/shapes@train", "val": f"shapes:{data}/shapes@val"}
    tree = {"name": "faults", "output_dir": str(run / "out"), "cache_dir": str(run / "cache"),
            "checkpoints": [{"name": "a", "random": "resnet18:cifar:8"}, {"name": "b", "random": "resnet18:cifar:16"}],
            "datasets": {"shapes": shapes},
            "evaluations": {"knn": {"protocol": "knn", "k": [5], "workers": 0, "datasets": ["shapes"]},
                            "linear": {"protocol": "linear", "mode": "cached", "optimizer": "sgd", "base_lr": 1.0,
                                       "batch_size": 8, "epochs": 2, "workers": 0, "tensorboard": False,
                                       "datasets": ["shapes"]}}}
    (run / "suite.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return ["suite", str(run / "suite.yaml")]


def _transfer(run: Path, data: Path) -> list[str]:
    return ["transfer", "--checkpoint", "random:resnet18:cifar:16", "--task",
            "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml", "--data-root", str(data), "--output-dir", str(run / "out"),
            "--quiet", "--trials", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2"]


TARGETS = {target.name: target for target in (
    Target("pretrain", _pretrain),
    Target("linear-protocol", _linear("protocol")),
    Target("linear-cached", _linear("cached", "--views", "2")),
    Target("knn", lambda run, data: _evaluation("knn", run, data, "--k", "5")),
    Target("suite", _suite, compared=("out/results.db", "out/jobs/**/*", "out/tables/*.csv", "out/tables/*.md",
                                      "out/tables/*.tex", "cache/*")),  # not the HTML table: random element ids
    Target("transfer", _transfer, compared=("out/results.db", "out/aggregate.json", "out/trial*/record.json",
                                            "out/trial*/final_results.json", "out/trial*/model_final.pth"),
           exact=False, detectron2=True),
)}
SHORT = ("pretrain", "linear-protocol", "linear-cached", "knn")


@dataclass
class Tally:
    """What one target's trials did and found."""

    target: str
    kills: int = 0
    points: dict[str, int] = field(default_factory=dict)  # kills at each named point
    missed: int = 0            # kills planned after the run had already ended
    runs_compared: int = 0
    files_compared: int = 0
    bytes_compared: int = 0
    bytes_lost: int = 0
    checked_after_kills: int = 0  # files read back whole right after a kill
    truncated_detected: int = 0
    resumes_checked: int = 0      # transfer trials killed after a checkpoint, found resumed from it
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- running


def child_env(report: Path | None = None, point: str | None = None) -> dict[str, str]:
    """The environment of a run to be killed: this one's (one thread: see run_target), fault points as asked."""
    env = {k: v for k, v in os.environ.items() if k not in (POINT_ENV, REPORT_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    if point:
        env.update({POINT_ENV: point, REPORT_ENV: str(report)})
    return env


def run_here(argv: list[str], run: Path, trace: bool = False) -> None:
    """A run that must succeed, in this process (no Python and torch start-up); ``trace``: record the fault
    points passed, here and in the run's subprocesses, in ``run/fault-report.txt``."""
    env, cwd = dict(os.environ), os.getcwd()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if trace:
        os.environ.update({POINT_ENV: TRACE, REPORT_ENV: str(run / "fault-report.txt")})
    fault_points.arm(TRACE if trace else None)
    os.chdir(run)
    try:
        with open(run / "log.txt", "a") as log, redirect_stdout(log), redirect_stderr(log):
            code = cli.main(argv)
    finally:
        os.chdir(cwd)
        fault_points.arm(None)
        os.environ.clear()
        os.environ.update(env)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])  # as pretrain found it
    if code != 0:
        tail = (run / "log.txt").read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{run}: exit code {code}; log.txt ends:\n" + "\n".join(tail))


def start(argv: list[str], run: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(run / "log.txt", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "simsiam_eval", *argv], cwd=run, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def check_ended(process: subprocess.Popen, run: Path) -> None:
    """A run that ended before its kill must have succeeded."""
    code = process.wait(timeout=TIMEOUT_S)
    if code != 0:
        tail = (run / "log.txt").read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{run}: exit code {code}; log.txt ends:\n" + "\n".join(tail))


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def killed_at_point(argv: list[str], run: Path, point: str) -> bool:
    """Run until a process of the run waits at ``point``, then kill the group; False if the run ended first."""
    report = run / "fault-report.txt"
    report.unlink(missing_ok=True)
    process = start(argv, run, child_env(report, point))
    deadline = time.monotonic() + TIMEOUT_S
    while process.poll() is None:
        if report.is_file() and report.read_text().startswith(point + " "):
            kill_group(process)
            return True
        if time.monotonic() > deadline:
            kill_group(process)
            raise RuntimeError(f"{run}: no sign of {point} in {TIMEOUT_S} s")
        time.sleep(0.01)
    check_ended(process, run)
    return False


def killed_after(argv: list[str], run: Path, delay: float) -> bool:
    """Kill the run's process group after ``delay`` seconds; False if the run ended first."""
    process = start(argv, run, child_env())
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        kill_group(process)
        return True
    check_ended(process, run)
    return False


def reference_run(target: Target, run: Path, data: Path) -> tuple[list[str], float]:
    """The uninterrupted run; returns the fault points it passed (``NAME@N``) and its duration."""
    run.mkdir(parents=True)
    began = time.monotonic()
    run_here(target.argv(run, data), run, trace=True)
    report = run / "fault-report.txt"
    passes = [line.split()[0] for line in report.read_text().splitlines()] if report.is_file() else []
    return sorted(set(passes)), time.monotonic() - began


# -------------------------------------------------------------------------------------------- comparing


def normalise(value, here: str, there: str):
    """``value`` without VOLATILE keys, with paths into ``here`` rewritten into ``there``."""
    if isinstance(value, dict):
        return {k: normalise(v, here, there) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return type(value)(normalise(v, here, there) for v in value)
    if isinstance(value, str):
        return value.replace(here, there)
    return value


def same(a, b) -> bool:
    """Deep equality; tensors bit for bit (dtype, shape and every element)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def read_output(path: Path):
    """A compared file's content: records of a database, JSON, JSON lines, torch objects, else text."""
    if path.name.endswith(".db"):
        return read_records(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix in (".pt", ".pth", ".tar"):
        return torch.load(path, map_location="cpu", weights_only=True)
    return path.read_text(errors="replace")


def content(path: Path, run: Path, exact: bool):
    """What is compared of an output: normalised, records in a stable order; only the shape if not ``exact``."""
    value = normalise(read_output(path), str(run), "RUN")
    if not exact:
        value = shape_of(value)
    if path.name.endswith(".db"):
        value = sorted(value, key=lambda record: json.dumps(record, sort_keys=True, default=str))
    return value


def shape_of(value):
    """Keys and value types, plus the values that say which record it is (protocol, trial, seed)."""
    if isinstance(value, list):
        return [shape_of(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k in ("protocol", "trial", "seed") else shape_of(v) for k, v in value.items()
                if k != "settings"}
    return type(value).__name__


def output_files(run: Path, target: Target) -> set[str]:
    found = {str(p.relative_to(run)) for pattern in target.compared for p in run.glob(pattern) if p.is_file()}
    return {f for f in found if Path(f).name not in NOT_OUTPUTS}


def compare(target: Target, reference: Path, trial: Path, tally: Tally) -> None:
    """Every reference output equal in the trial; nothing extra in the trial (a temporary file, a second record)."""
    expected, found = output_files(reference, target), output_files(trial, target)
    for extra in sorted(found - expected):
        tally.problems.append(f"{target.name}: {trial.name}/{extra} left over (not in the reference)")
    for name in sorted(expected):
        size = (reference / name).stat().st_size
        tally.files_compared += 1
        tally.bytes_compared += size
        if name not in found:
            tally.bytes_lost += size
            tally.problems.append(f"{target.name}: {trial.name}/{name} missing")
            continue
        if not same(content(reference / name, reference, target.exact), content(trial / name, trial, target.exact)):
            tally.bytes_lost += size
            tally.problems.append(f"{target.name}: {trial.name}/{name} differs from the reference")
    tally.runs_compared += 1


def check_readable(trial: Path, target: Target, tally: Tally) -> None:
    """Right after a kill: every output present reads back whole (a torn write is never in place), and so
    does the checkpoint each transfer trial's ``last_checkpoint`` names."""
    paths = [trial / name for name in sorted(output_files(trial, target))]
    paths += [tag.parent / tag.read_text().strip() for tag in sorted(trial.glob("out/trial*/last_checkpoint"))]
    for path in paths:
        if path.suffix not in (".pt", ".pth", ".tar", ".json", ".db") or path.name.startswith("."):
            continue
        try:
            read_output(path)
        except Exception as exc:  # noqa: BLE001 -- any failure to read is the finding
            tally.problems.append(f"{target.name}: {path.relative_to(trial.parent)} unreadable after a kill "
                                  f"({type(exc).__name__}: {exc})")
        tally.checked_after_kills += 1


# ------------------------------------------------------------------------------------------------ trials


def interrupted_run(target: Target, run: Path, data: Path, kills: int, passes: list[str], duration: float,
                    rng: random.Random, tally: Tally, first: str | None = None) -> None:
    """``kills`` kills, then a run to the end. The first kill is at a traced point (``first`` or a random
    one: a fresh run passes it as the reference did), each further one at a traced point or after a
    random delay."""
    run.mkdir(parents=True)
    argv, checkpointed = target.argv(run, data), set()
    for index in range(kills):
        if passes and (index == 0 or rng.random() < 0.5):
            point = first if index == 0 and first else rng.choice(passes)
            killed = killed_at_point(argv, run, point)
            if killed:
                name = point.split("@")[0]
                tally.points[name] = tally.points.get(name, 0) + 1
        else:  # a killed run starts Python and torch first (the reference did not)
            killed = killed_after(argv, run, STARTUP_S + rng.uniform(0, duration))
        if not killed:  # the run ended (successfully) before the kill: nothing left to re-run
            tally.missed += 1
            return
        tally.kills += 1
        check_readable(run, target, tally)
        checkpointed |= {p.parent for p in run.glob("out/trial*/last_checkpoint")
                         if not (p.parent / "final_results.json").is_file()}
    run_here(argv, run)
    for trial in sorted(checkpointed):  # a transfer trial killed after a checkpoint resumes from its last one
        tally.resumes_checked += 1
        if "resumed from" not in (trial / "log.txt").read_text():
            tally.problems.append(f"{target.name}: {trial.relative_to(run.parent)} did not resume from its checkpoint")


def truncated_cache_run(target: Target, reference: Path, run: Path, data: Path, tally: Tally) -> None:
    """The reference's feature cache with its largest entry cut in half: detected, logged, recomputed."""
    run.mkdir(parents=True)
    shutil.copytree(reference / "cache", run / "cache")
    entry = max((run / "cache").glob("*.pt"), key=lambda p: p.stat().st_size)
    entry.write_bytes(entry.read_bytes()[:entry.stat().st_size // 2])
    run_here(target.argv(run, data), run)
    if f"feature cache: discarded {entry}" in (run / "log.txt").read_text():
        tally.truncated_detected += 1
    else:
        tally.problems.append(f"{target.name}: the truncated cache entry {entry.name} was not reported")
    compare(target, reference, run, tally)


def make_data(folder: Path, detection: bool) -> Path:
    """Tiny shapes data (24 training, 12 validation images of 16 px; 8 + 3 detection scenes)."""
    settings = ShapesSettings(train_per_class=4, val_per_class=2, image_size=16, detection_train=8, detection_val=3,
                              detection_size=96)
    write_shapes_dataset(folder / "shapes", settings, detection=detection)
    if detection:  # so few scenes may lack a class: the VOC folder declares its classes
        (folder / "shapes" / "voc" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


def run_target(name: str, work: Path, trials: int, kills: int, seed: int, first: str | None = None) -> Tally:
    """The reference run of target ``name`` and ``trials`` interrupted runs compared with it (``first``: the
    point of every trial's first kill, e.g. ``trial-step@2``; default random)."""
    target, tally = TARGETS[name], Tally(name)
    rng = random.Random(f"{seed}:{name}")
    data = make_data(work / ("d2data" if target.detectron2 else "data"), target.detectron2)
    threads, env = torch.get_num_threads(), dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"  # the killed runs and the runs here: one thread, the same arithmetic
    torch.set_num_threads(1)
    try:
        passes, duration = reference_run(target, work / name / "reference", data)
        for index in range(trials):
            trial = work / name / f"trial{index + 1}"
            interrupted_run(target, trial, data, kills, passes, duration, rng, tally, first)
            compare(target, work / name / "reference", trial, tally)
        if name == "knn":
            truncated_cache_run(target, work / name / "reference", work / name / "truncated", data, tally)
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
    return tally


def summary(tallies: list[Tally]) -> str:
    rows = [f"{'target':<16} {'kills':>5} {'missed':>6} {'runs':>4} {'files':>5} {'bytes compared':>14} "
            f"{'bytes lost':>10} {'read after kill':>15}  named points killed at"]
    for t in tallies:
        points = ", ".join(f"{k} {v}" for k, v in sorted(t.points.items())) or "-"
        extra = (f"; truncated cache entry detected {t.truncated_detected}" if t.truncated_detected else "") + (
            f"; trials resumed from their checkpoint {t.resumes_checked}" if t.resumes_checked else "")
        rows.append(f"{t.target:<16} {t.kills:>5} {t.missed:>6} {t.runs_compared:>4} {t.files_compared:>5} "
                    f"{t.bytes_compared:>14,} {t.bytes_lost:>10,} {t.checked_after_kills:>15}  {points}{extra}")
    kills, problems = sum(t.kills for t in tallies), [p for t in tallies for p in t.problems]
    rows.append(f"kills: {kills}, {'all survived' if not problems else 'NOT ALL SURVIVED'}; runs compared: "
                f"{sum(t.runs_compared for t in tallies)}; bytes lost: {sum(t.bytes_lost for t in tallies):,}; "
                f"problems: {len(problems)}")
    return "\n".join(rows + [f"  {p}" for p in problems])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(SHORT),
                        help=f"what to run (default: {' '.join(SHORT)})")
    parser.add_argument("--trials", type=int, default=1, help="interrupted runs per target (default 1)")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per interrupted run (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fault-injection-"))
    began = time.time()
    try:
        tallies = [run_target(name, work, args.trials, args.kills, args.seed) for name in args.targets]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"fault injection: seed {args.seed}, {args.trials} trial(s) x {args.kills} kill(s) per target, "
          f"{time.time() - began:.0f} s")
    print(summary(tallies))
    return 1 if any(t.problems for t in tallies) else 0


if __name__ == "__main__":
    raise SystemExit(main())

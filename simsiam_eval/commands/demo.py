"""``simsiam-eval demo [--output-dir DIR]``: the whole toolkit end to end on CPU in a few minutes.

Shapes data (classification and detection splits, generated here) -> the packaged suite ``suites/demo``
run by the suite runner: SimSiam pretraining (kNN monitor); kNN, cached linear probe x 3 seeds and a
smoke detection fine-tune of the checkpoint and of two baselines evaluated the same way (the run's own
initial weights, the controlled "no pretraining" comparison, and torchvision's default random init);
comparison tables and plots -> a closing summary. A re-run skips the suite's finished jobs.
"""
from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

SUITE = "suites/demo"
DETECTION = "detection"  # the suite's transfer evaluation


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="end-to-end demo on CPU: the packaged suite suites/demo (pretrain, evaluate, fine-tune, "
                     "table, plots)",
        description="Run the toolkit end to end on the synthetic shapes data (generated, no download; "
                    "a few minutes on 2 CPU cores): the packaged suite suites/demo pretrains SimSiam with the kNN "
                    "monitor and evaluates the checkpoint, its own initial weights (no pretraining) and a "
                    "torchvision random init the same way (weighted kNN, cached linear probe x 3 seeds, a smoke "
                    "detection fine-tune if Detectron2 is installed), then prints the comparison tables and "
                    "writes plots. Re-running skips finished jobs.")
    parser.add_argument("--output-dir", default="runs/demo", metavar="DIR",
                        help="where everything goes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="pretraining epochs (default: the pretrain/shapes_cpu preset's)")
    parser.add_argument("--skip-detection", action="store_true", help="drop the detection fine-tunes")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (the suite's jobs write their output to log files, without them)")
    parser.set_defaults(func=run)


class Steps:
    """Prints each step's banner and keeps its wall time for the summary."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[tuple[str, float]] = []

    def run(self, title: str, action, *args, **kwargs):
        print(f"\n=== {title} ===", flush=True)
        began = time.perf_counter()
        result = action(*args, **kwargs)
        self.times.append((title, time.perf_counter() - began))
        return result

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def suite_overrides(out: Path, epochs: int | None) -> list[str]:
    """The ``key=value`` items that put suites/demo's outputs and data under ``out``."""
    data = f"shapes:{out / 'data' / 'shapes'}"
    items = [f"output_dir={out}", f"cache_dir={out / 'cache'}",
             f"datasets.shapes.train={data}@train", f"datasets.shapes.val={data}@val",
             f"pretrain.0.overrides.data.train={data}@train", f"pretrain.0.overrides.knn.train={data}@train",
             f"pretrain.0.overrides.knn.val={data}@val", f"evaluations.{DETECTION}.data_root={out / 'data'}"]
    if epochs is not None:
        items.append(f"pretrain.0.overrides.epochs={epochs}")
    return items


def detection_unavailable(skip: bool) -> str | None:
    """Why the detection fine-tunes cannot run here (None when they can)."""
    from simsiam_eval.errors import UserError
    from transfer.preflight import require_detectron2

    if skip:
        return "--skip-detection"
    try:
        require_detectron2()
    except UserError as exc:
        return str(exc)
    return None


def drop_evaluation(suite, name: str) -> None:
    """Take the evaluation ``name`` and its jobs out of the suite."""
    del suite.evaluations[name]
    if suite.jobs is not None:
        suite.jobs = [job for job in suite.jobs if job["evaluation"] != name]


def summary(out: Path, steps: Steps, command: str, tables: list[Path], plots: list[Path], detection: str) -> str:
    """The closing screen: where everything is."""
    figures = ", ".join(str(p) for p in plots[:3]) + (" ..." if len(plots) > 3 else "")
    times = ", ".join(f"{title.split(':')[0]} {seconds:.0f}s" for title, seconds in steps.times)
    return "\n".join([
        f"{'=' * 20} simsiam-eval demo: done in {steps.total / 60:.1f} min {'=' * 20}",
        f"data           {out / 'data' / 'shapes'}  (ImageFolder train/val; voc/ and coco/ detection splits)",
        f"suite          {command}  (re-runs skip finished jobs)",
        f"pretraining    {out / 'pretrain'}/*  (checkpoint_*.pth.tar, init.pth.tar, metrics.jsonl)",
        f"jobs           {out / 'jobs'}/*  (records, linear runs, detection trials; output in {out / 'logs'})",
        f"results store  {out / 'results.db'}  ->  simsiam-eval table {out / 'results.db'}",
        f"detection      {detection}",
        f"tables         {', '.join(str(p) for p in tables) or 'none'}  (+ .tex .csv .html)",
        f"plots          {figures or 'none'}  (+ .svg)",
        f"step times     {times}",
    ])


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.data.specs import prepare_dataset
    from simsiam_eval.suite.run import run_suite
    from simsiam_eval.suite.spec import read_suite

    out = Path(args.output_dir)
    steps = Steps()
    steps.run("1/2 data: synthetic shapes (generated once, no download)", prepare_dataset,
              f"shapes:{out / 'data' / 'shapes'}@train")
    overrides = suite_overrides(out, args.epochs)
    suite = read_suite(SUITE, overrides)
    skipped = detection_unavailable(args.skip_detection)
    if skipped:
        drop_evaluation(suite, DETECTION)
        print(f"detection fine-tunes skipped: {skipped}")
    failed = steps.run(f"2/2 suite {SUITE}: pretrain, evaluate, tables and plots", run_suite, suite)
    detection = f"skipped: {skipped}" if skipped else f"{out / 'jobs'}/*-{DETECTION}  (1 trial each, smoke schedule)"
    command = shlex.join(["simsiam-eval", "suite", SUITE, *overrides])
    print("\n" + summary(out, steps, command, sorted((out / "tables").glob("*.md")),
                         sorted((out / "plots").glob("*.png")), detection))
    return failed

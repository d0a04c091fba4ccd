"""``simsiam-eval plot RUN_DIR``: training curves and result bar charts as PNG and SVG;
``simsiam-eval plot --sweep RUN_DIR``: accuracy of a run's evaluated checkpoints against epoch."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="plot training curves and result tables of a run folder (PNG + SVG), or an epoch sweep",
        description="Plot what a run folder holds: for every metrics.jsonl under RUN_DIR, pretraining "
                    "curves (loss, collapse std against 1/sqrt(d), kNN top-1 by epoch) or linear-probe "
                    "curves (loss, top-1/top-5 by epoch); for its results database, a grouped bar chart "
                    "of each table (means with sample-std error bars). With --sweep RUN_DIR (a pretraining "
                    "folder): the kNN/linear top-1 of each of its evaluated checkpoints against epoch, beside "
                    "the run's own kNN-monitor curve, as sweep.png/.svg and the points as sweep.csv.")
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a pretrain, linear or demo output folder")
    parser.add_argument("--sweep", metavar="RUN_DIR",
                        help="plot the epoch sweep of this pretraining run's checkpoints instead")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where to write the figures (default: RUN_DIR/plots; with --sweep, RUN_DIR)")
    parser.add_argument("--results", metavar="DB", help="results database to read (default: RUN_DIR/results.db)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.errors import UserError

    if (args.run_dir is None) == (args.sweep is None):
        raise UserError("give either RUN_DIR or --sweep RUN_DIR")
    written = plot_sweep(args) if args.sweep else plot_folder(args)
    for path in written:
        print(f"wrote {path}")
    return 0


def plot_folder(args: argparse.Namespace) -> list:
    from simsiam_eval.report.plots import plot_run

    return plot_run(args.run_dir, args.output_dir, args.results)


def plot_sweep(args: argparse.Namespace) -> list:
    """Write the sweep figure and CSV and print the points, one row per epoch."""
    from pathlib import Path

    from simsiam_eval.report.sweep import monitor_curve, plot_epoch_sweep, points_table, sweep_points
    from simsiam_eval.results.store import DEFAULT_DB_NAME, read_records

    run_dir = Path(args.sweep)
    records = read_records(args.results or run_dir / DEFAULT_DB_NAME)
    written = plot_epoch_sweep(records, run_dir, Path(args.output_dir or run_dir) / "sweep")
    table = points_table(sweep_points(records, run_dir), monitor_curve(run_dir))
    print(table.to_string(float_format="%.2f", na_rep="-"))
    return written

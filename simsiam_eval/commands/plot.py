"""``simsiam-eval plot RUN_DIR``: training curves and result bar charts as PNG and SVG."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="plot training curves and result tables of a run folder (PNG + SVG)",
        description="Plot what a run folder holds: for every metrics.jsonl under RUN_DIR, pretraining "
                    "curves (loss, collapse std against 1/sqrt(d), kNN top-1 by epoch) or linear-probe "
                    "curves (loss, top-1/top-5 by epoch); for its results database, a grouped bar chart "
                    "of each table (means with sample-std error bars).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain, linear or demo output folder")
    parser.add_argument("--output-dir", metavar="DIR", help="where to write the figures (default: RUN_DIR/plots)")
    parser.add_argument("--results", metavar="DB", help="results database to chart (default: RUN_DIR/results.db)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simsiam_eval.report.plots import plot_run

    for path in plot_run(args.run_dir, args.output_dir, args.results):
        print(f"wrote {path}")
    return 0

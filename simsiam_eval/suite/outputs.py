"""A suite's closing outputs: its tables (Table 4 layout for kNN/linear, Table 5 for transfer), printed
and written to ``tables/``, and its plots in ``plots/``; with ``study:``, the study's (suite/study.py)."""
from __future__ import annotations

from pathlib import Path

from simsiam_eval.errors import UserError, one_line
from simsiam_eval.report.build import comparison_tables
from simsiam_eval.report.plots import plot_run
from simsiam_eval.report.render import to_markdown, write_table
from simsiam_eval.report.sweep import plot_epoch_sweep
from simsiam_eval.suite.execute import SUITE_JOB_PART
from simsiam_eval.suite.jobs import SUITE_JOB, Job
from simsiam_eval.suite.spec import Suite
from simsiam_eval.suite.study import write_study


def epoch_sweeps(suite: Suite, records: list[dict]) -> list[Path]:
    """For each checkpoint glob (one run's checkpoints): accuracy against epoch beside the run's monitor."""
    written = []
    for number, pattern in enumerate(sorted({c.sweep for c in suite.checkpoints if c.sweep}), 1):
        folders = {Path(c.source).parent for c in suite.checkpoints if c.sweep == pattern}
        if len(folders) != 1:
            print(f"no epoch sweep for '{pattern}': its checkpoints are in {len(folders)} folders, not one run's")
            continue
        try:
            written += plot_epoch_sweep(records, folders.pop(), suite.output_dir / "plots" / f"sweep{number}")
        except UserError as error:
            print(f"no epoch sweep for '{pattern}': {one_line(error)}")
    return written


def current_records(records: list[dict], jobs: list[Job]) -> list[dict]:
    """The records of these jobs (by key): a job's records from older settings stay in the database
    but out of the suite's tables."""
    keys = {job.key for job in jobs if job.key}
    return [r for r in records
            if keys & {(r.get("settings") or {}).get(SUITE_JOB), (r.get("settings") or {}).get(SUITE_JOB_PART)}]


def comparison_outputs(suite: Suite, records: list[dict]) -> list[Path]:
    """Print the comparison tables of ``records`` and write them, the plots and the epoch sweeps."""
    written = []
    for layout, table in comparison_tables(records, reference="none").items():
        print(f"\n## {table.title or layout}\n\n{to_markdown(table)}")
        written += write_table(table, suite.output_dir / "tables" / layout)
    try:
        written += plot_run(suite.output_dir, records=records)
    except UserError as error:
        print(f"no plots: {one_line(error)}")
    return written + epoch_sweeps(suite, records)


def write_outputs(suite: Suite, records: list[dict], jobs: list[Job]) -> list[Path]:
    """Print the suite's tables (the records of its current jobs) and write them and its plots; then the
    study's, which show the runs not yet recorded too."""
    records = current_records(records, jobs)
    if not records:
        print(f"suite {suite.name}: no records yet, no tables")
    written = comparison_outputs(suite, records) if records else []
    if suite.study:
        written += write_study(suite, records)
    if not written:
        return []
    shown = sorted({str(p.with_suffix("")) for p in written})
    print(f"\ntables and plots: {', '.join(shown)} (+ formats)")
    return written

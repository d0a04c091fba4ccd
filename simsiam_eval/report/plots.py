"""Figures (matplotlib, Agg backend; each saved as PNG and SVG).

- pretraining curves from ``metrics.jsonl``: loss, collapse std against 1/sqrt(d), kNN top-1 by epoch;
- linear-probe curves from ``metrics.jsonl``: loss and top-1/top-5 by epoch;
- a grouped bar chart of a table (means with sample-std error bars).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from simsiam_eval.atomic import atomic_path  # noqa: E402
from simsiam_eval.report.tables import Table  # noqa: E402

FORMATS = ("png", "svg")
DPI = 100


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON lines of ``path``; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write ``fig`` atomically as ``stem``.png and ``stem``.svg, then close it."""
    stem = Path(stem)
    paths = []
    for fmt in FORMATS:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def epoch_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Per-epoch rows, the last line winning when an epoch was logged twice (resumed runs)."""
    frame = pd.DataFrame([r for r in rows if "epoch" in r])
    if frame.empty:
        return frame
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").set_index("epoch")


def draw_line(ax, series: pd.Series, label: str | None = None, **kwargs) -> None:
    """``series`` against its index with point markers, NaNs left out."""
    series = series.dropna()
    ax.plot(series.index, series.values, marker="o", markersize=3, label=label, **kwargs)


def is_pretrain_log(rows: list[dict]) -> bool:
    return any("collapse_std" in r for r in rows)


def is_linear_log(rows: list[dict]) -> bool:
    return any("top1" in r for r in rows) and not is_pretrain_log(rows)


def plot_pretrain_curves(rows: list[dict], stem: str | Path, title: str = "SimSiam pretraining") -> list[Path]:
    """Loss, collapse std (with the healthy level 1/sqrt(d)) and kNN top-1 against epochs."""
    frame = epoch_frame(rows)
    has_knn = "knn_top1" in frame and frame["knn_top1"].notna().any()
    fig, axes = plt.subplots(1, 3 if has_knn else 2, figsize=(11 if has_knn else 7.5, 3.2))
    draw_line(axes[0], frame["loss"])
    axes[0].set(title="loss (min -1)", xlabel="epoch")
    draw_line(axes[1], frame["collapse_std"], "std of z/||z||")
    top = frame["collapse_std"].max()
    if "collapse_reference" in frame and frame["collapse_reference"].notna().any():
        reference = frame["collapse_reference"].dropna().iloc[-1]
        axes[1].axhline(reference, color="grey", linestyle="--", label="1/sqrt(d)")
        top = max(top, reference)
    axes[1].set(title="collapse monitor", xlabel="epoch", ylim=(0, 1.2 * top))
    axes[1].legend(fontsize=8, loc="lower right")
    if has_knn:
        draw_line(axes[2], frame["knn_top1"], "top-1")
        if "knn_top5" in frame and frame["knn_top5"].notna().any():
            draw_line(axes[2], frame["knn_top5"], "top-5")
            axes[2].legend(fontsize=8, loc="best")
        axes[2].set(title="kNN monitor (%)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_linear_curves(runs: Mapping[str, list[dict]], stem: str | Path, title: str = "Linear probe") -> list[Path]:
    """Training loss and validation accuracy against epochs, one line per run (``label -> rows``);
    top-5 is drawn too when there is a single run."""
    fig, axes = plt.subplots(1, 2, figsize=(8.5 if len(runs) > 1 else 7.5, 3.2))
    for label, rows in runs.items():
        frame = epoch_frame(rows)
        name = label if len(runs) > 1 else None
        if "loss" in frame:
            draw_line(axes[0], frame["loss"], name)
        if "top1" in frame:
            draw_line(axes[1], frame["top1"], name if name else "top-1")
        if len(runs) == 1 and "top5" in frame:
            draw_line(axes[1], frame["top5"], "top-5")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation top-1 (%)" if len(runs) > 1 else "validation accuracy (%)", xlabel="epoch")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0)) if len(runs) > 1 else axes[1].legend(
        fontsize=8, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)


def _row_label(key) -> str:
    """``name (E ep)`` for (name, epochs) rows; other keys joined by spaces."""
    if isinstance(key, tuple) and len(key) == 2 and str(key[1]).replace(".", "").isdigit():
        return f"{key[0]} ({key[1]} ep)"
    return " ".join(str(k) for k in key if str(k) and str(k) != "-") if isinstance(key, tuple) else str(key)


def _column_label(key) -> str:
    return "\n".join(str(k) for k in key if str(k)) if isinstance(key, tuple) else str(key)


def plot_table_bars(table: Table, stem: str | Path, title: str | None = None) -> list[Path]:
    """Grouped bars: one group per table column, one bar per row, sample std as error bars."""
    mean = table.mean.astype(float)
    std = table.std.astype(float)  # NaN (one trial) draws no error bar
    mean.index = [_row_label(k) for k in mean.index]
    mean.columns = [_column_label(k) for k in mean.columns]
    std.index, std.columns = mean.index, mean.columns
    width = 2.5 + len(mean.columns) * (0.5 + 0.45 * len(mean.index))
    fig, ax = plt.subplots(figsize=(min(max(width, 4.5), 14), 3.8))
    mean.T.plot.bar(yerr=std.T, ax=ax, capsize=3, rot=0, width=0.8)
    for container in ax.containers:
        if hasattr(container, "patches"):
            ax.bar_label(container, fmt="%.1f", fontsize=7, padding=2)
    ax.set(title=title or table.title, ylabel="mean ± std over trials")
    ax.set_ylim(0, max(1.0, float((mean + std.fillna(0)).max().max())) * 1.15)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(3, len(mean.index)),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_run(run_dir: str | Path, output_dir: str | Path | None = None,
             results: str | Path | None = None, records: list[dict] | None = None) -> list[Path]:
    """Every figure a run folder supports: curves for each pretraining ``metrics.jsonl`` under it, one
    figure of all linear-probe runs under it, and bar charts of the tables built from ``records``, else
    from its results database (``results`` or ``RUN_DIR/results.db``)."""
    from simsiam_eval.errors import UserError
    from simsiam_eval.report.build import comparison_tables
    from simsiam_eval.results.store import DEFAULT_DB_NAME, read_records

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    output_dir = Path(output_dir) if output_dir else run_dir / "plots"
    written: list[Path] = []
    linear: dict[str, list[dict]] = {}
    for log in sorted(run_dir.rglob("metrics.jsonl")):
        rows = read_jsonl(log)
        name = "-".join(log.parent.relative_to(run_dir).parts) or run_dir.resolve().name
        if is_pretrain_log(rows):
            written += plot_pretrain_curves(rows, output_dir / f"{name}-curves", f"SimSiam pretraining ({name})")
        elif is_linear_log(rows):
            linear[name] = rows
    if linear:
        shared = os.path.commonprefix([name.split("-") for name in linear])
        if len(linear) > 1 and shared:  # label the runs by what differs: eval-x-seed0 -> x-seed0
            linear = {"-".join(name.split("-")[len(shared):]) or name: rows for name, rows in linear.items()}
        written += plot_linear_curves(linear, output_dir / "linear-curves",
                                      "Linear probe" + (f" ({next(iter(linear))})" if len(linear) == 1 else ""))
    db = Path(results) if results else run_dir / DEFAULT_DB_NAME
    if records is None and db.is_file():
        records = read_records(db)
    if records:
        for layout, table in comparison_tables(records, reference="none").items():
            if not table.empty:
                written += plot_table_bars(table, output_dir / f"{layout}-bars")
    if not written:
        raise UserError(f"{run_dir}: nothing to plot (no metrics.jsonl under it and no {DEFAULT_DB_NAME})")
    return written

"""Epoch sweeps: the accuracy of one pretraining run's checkpoints against their epoch, beside the
run's own kNN-monitor curve (``knn_top1`` in its ``metrics.jsonl``).

The points come from kNN and linear records (``simsiam_eval.results``) whose checkpoint file lies in
the run folder; one curve per protocol and setting (each k of a kNN record, the dataset it ran on).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from simsiam_eval.atomic import atomic_write_text  # noqa: E402
from simsiam_eval.config import read_yaml  # noqa: E402
from simsiam_eval.errors import UserError  # noqa: E402
from simsiam_eval.report.plots import draw_line, epoch_frame, read_jsonl, save_figure  # noqa: E402
from simsiam_eval.results.records import dataset_name, record_dataset  # noqa: E402

# The file names pretraining writes (pretrain/checkpointing.py, main_simsiam.py's layout):
# checkpoint_{e:04d}.pth.tar after the epoch of 0-based index e, and init.pth.tar before the first step.
CHECKPOINT_FILE = re.compile(r"^checkpoint_(\d{4,})\.pth\.tar$")
INIT_FILE = "init.pth.tar"
POINT_COLUMNS = ["curve", "epoch", "top1", "n", "checkpoint"]


def checkpoint_epoch(record: Mapping) -> int | None:
    """The pretraining epochs behind a record's checkpoint: ``checkpoint.epochs`` (the ``epoch`` the
    checkpoint reader found in the file: ``e + 1`` in ``checkpoint_{e:04d}.pth.tar``, 0 in
    ``init.pth.tar``); only when that is absent, parsed from the file name the same way; None when
    neither says."""
    checkpoint = record.get("checkpoint") or {}
    epochs = checkpoint.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        return epochs
    name = PurePath(str(checkpoint.get("path") or "")).name
    if name == INIT_FILE:
        return 0
    match = CHECKPOINT_FILE.match(name)
    return int(match.group(1)) + 1 if match else None


def _folder(record: Mapping) -> Path:
    """The folder of the record's checkpoint file (a relative path is taken from the current folder)."""
    return Path(str(record["checkpoint"].get("path") or "")).expanduser().resolve().parent


def _curves(record: Mapping) -> dict[str, float]:
    """``{curve label: top-1}`` of one kNN or linear record: one curve per k of a kNN record."""
    data = record.get("data") or {}
    where = record_dataset(record) + (f", {data['num_val']} val images" if data.get("num_val") else "")
    metrics, settings = record["metrics"], record.get("settings") or {}
    if record["protocol"] != "knn":
        return {f"{record['protocol']} ({where})": metrics["top1"]}
    ks = settings.get("k") or ["?"]
    ks = ks if isinstance(ks, list) else [ks]
    temperature = settings.get("temperature", "?")
    return {f"kNN k={k}, T={temperature} ({where})": metrics.get(f"top1_k{k}", metrics["top1"])
            for k in (ks if len(ks) > 1 else ks[:1])}


def sweep_points(records: Iterable[Mapping], run_dir: str | Path | None = None) -> pd.DataFrame:
    """Top-1 per pretraining epoch of the kNN and linear records of one run's checkpoints.

    A record belongs to the run when its checkpoint file is in ``run_dir``; without ``run_dir`` every
    record must come from one folder. Records whose epoch is unknown (see :func:`checkpoint_epoch`)
    are left out. Several records of one curve and epoch (trials, seeds) are averaged (``n``).
    Columns ``curve, epoch, top1, n, checkpoint`` (the file name), sorted by curve and epoch.
    """
    chosen = [r for r in records if (r["protocol"] == "knn" or r["protocol"].startswith("linear"))
              and "top1" in r["metrics"] and checkpoint_epoch(r) is not None]
    if run_dir is not None:
        folder = Path(run_dir).expanduser().resolve()
        chosen = [r for r in chosen if _folder(r) == folder]
    else:
        folders = sorted({str(_folder(r)) for r in chosen})
        if len(folders) > 1:
            raise UserError(f"the records' checkpoints are in {len(folders)} folders ({', '.join(folders[:3])}"
                            f"{', ...' if len(folders) > 3 else ''}); name the run folder")
    rows = [{"curve": curve, "epoch": checkpoint_epoch(r), "top1": top1,
             "checkpoint": PurePath(str(r["checkpoint"]["path"])).name}
            for r in chosen for curve, top1 in _curves(r).items()]
    if not rows:
        return pd.DataFrame(columns=POINT_COLUMNS)
    points = (pd.DataFrame(rows).groupby(["curve", "epoch"], as_index=False)
              .agg(top1=("top1", "mean"), n=("top1", "size"), checkpoint=("checkpoint", "first")))
    return points[POINT_COLUMNS]


def _short_spec(spec: str) -> str:
    """``fashion-mnist@test`` for ``fashion-mnist:/usr/share/...@test``; a folder's short name."""
    kind = spec.split(":", 1)[0] if ":" in spec else ""
    split = spec.rsplit("@", 1)[1] if kind and "@" in spec else ""
    return dataset_name(spec) + (f"@{split}" if split else "")


def monitor_label(run_dir: str | Path) -> str:
    """The monitor curve's legend entry: its k, T and bank/query sets from the run's ``config.yaml``."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        return "run's kNN monitor (settings unknown: no config.yaml)"
    knn = read_yaml(config).get("knn") or {}
    k = knn.get("k")
    k = k[0] if isinstance(k, list) and k else k
    return (f"run's kNN monitor (k={k}, T={knn.get('temperature')}; bank {_short_spec(str(knn.get('train')))}, "
            f"queries {_short_spec(str(knn.get('val')))})")


def monitor_curve(run_dir: str | Path) -> pd.Series:
    """The run's monitor top-1 by epoch (``knn_top1`` in ``RUN_DIR/metrics.jsonl``); empty without one."""
    log = Path(run_dir) / "metrics.jsonl"
    frame = epoch_frame(read_jsonl(log)) if log.is_file() else pd.DataFrame()
    return frame["knn_top1"].dropna() if "knn_top1" in frame else pd.Series(dtype=float)


def points_table(points: pd.DataFrame, monitor: pd.Series) -> pd.DataFrame:
    """One row per evaluated epoch: each curve's top-1 and the monitor's at that epoch, for printing."""
    table = points.pivot(index="epoch", columns="curve", values="top1").rename_axis(columns=None)
    if not monitor.empty:
        table.insert(0, "monitor", monitor)
    return table.sort_index()


def plot_epoch_sweep(records: Iterable[Mapping], run_dir: str | Path, output: str | Path) -> list[Path]:
    """Top-1 of each evaluated checkpoint of ``run_dir`` against epoch (one line per curve of
    :func:`sweep_points`), beside the run's kNN-monitor curve; saved as ``output``.png and .svg,
    with the points in ``output``.csv. Returns the paths written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    points = sweep_points(records, run_dir)
    if points.empty:
        raise UserError(f"{run_dir}: no kNN or linear record of a checkpoint in this folder (relative "
                        f"checkpoint paths in records are taken from the current folder)")
    output = Path(output)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    monitor = monitor_curve(run_dir)
    if not monitor.empty:
        draw_line(ax, monitor, monitor_label(run_dir), color="grey", linestyle="--")
    for curve, group in points.groupby("curve"):
        draw_line(ax, group.set_index("epoch")["top1"], f"full evaluation: {curve}")
    ax.set(title=f"Epoch sweep ({run_dir.resolve().name})", xlabel="pretraining epoch", ylabel="top-1 (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    fig.tight_layout()
    csv = output.with_name(f"{output.name}.csv")
    atomic_write_text(points.to_csv(index=False), csv)
    return save_figure(fig, output) + [csv]

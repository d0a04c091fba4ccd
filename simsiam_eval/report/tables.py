"""Comparison tables: aggregate trials (mean, sample std, n), lay them out, mark the best entries.

A :class:`Table` holds three frames with the same rows and columns — ``mean``, ``std``, ``n`` — built
from the long frame of :mod:`simsiam_eval.report.measurements`. Layouts:

- ``table4``: rows (method, epochs) x columns (dataset, kNN top-1 / linear top-1), as SimSiam Table 4
  (the linear probe on cached features, a documented deviation, gets its own column, and so does every
  low-shot label set: ``linear top-1 (10% labels, best epoch)``, its subset seeds averaged as trials).
  The linear columns show the best epoch's top-1 (main_lincls' headline) or the last epoch's, and say which.
- ``table5``: rows (method, epochs) x columns (VOC07, VOC07+12, COCO det, COCO mask, ... x AP50 / AP /
  AP75) from per-trial ``transfer`` records, as SimSiam Table 5.
- ``pivot``: any fields of the long frame as rows and columns.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from simsiam_eval.errors import UserError
from simsiam_eval.results.aggregate import aggregate

FIELDS = ("name", "epochs", "protocol", "labels", "dataset", "metric")
FIELD_TITLES = {"name": "Method", "epochs": "Epochs", "protocol": "Protocol", "labels": "Labels",
                "dataset": "Dataset", "metric": "Metric", "task": "Task", "column": ""}
TABLE4_COLUMNS = {"knn": "kNN top-1", "linear": "linear top-1 ({labels}{epoch} epoch)",
                  "linear-cached": "linear top-1 (cached, {labels}{epoch} epoch)"}  # {labels}: "10% labels, "
LINEAR_EPOCH_METRICS = {"best": "top1", "last": "last_top1"}  # which record metric the linear columns show
LINEAR_EPOCH_NOTES = {
    "best": "linear top-1: the best epoch's, as main_lincls reports it (best_acc1, model_best.pth.tar)",
    "last": "linear top-1: the last epoch's (main_lincls reports the best epoch's; published rows: as their "
            "source reports them)"}
DETECTION_METRICS = ("AP50", "AP", "AP75")
TASK_LABELS = {"voc07": "VOC07", "voc0712": "VOC07+12", "voc07+12": "VOC07+12", "coco": "COCO",
               "coco_1x": "COCO", "coco_2x": "COCO 2x"}
TASK_ORDER = ("VOC07", "VOC07+12", "COCO det", "COCO mask", "COCO 2x det", "COCO 2x mask")
_BOX = re.compile(r"^(?:bbox[/._]|box[/._])?(AP|AP50|AP75)$")
_MASK = re.compile(r"^(?:segm|mask)[/._](AP|AP50|AP75)$")


@dataclass
class Table:
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    title: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # published row name -> citation
    notes: list[str] = field(default_factory=list)  # what the columns show, printed under the table

    @property
    def empty(self) -> bool:
        return self.mean.empty


def epochs_label(value) -> str:
    """Epochs as a table label: ``200``, or ``-`` when unknown."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if math.isnan(number) else f"{number:g}"


def pivot(long: pd.DataFrame, rows: list[str], columns: list[str], title: str = "",
          column_order: list[tuple] | None = None) -> Table:
    """Aggregate ``long`` by rows + columns and spread the columns out (published rows first)."""
    unknown = [f for f in rows + columns if f not in long.columns]
    if unknown:
        raise UserError(f"unknown table field(s) {unknown}; choose from {list(FIELDS)}")
    long = long.copy()
    if "epochs" in long:
        long["epochs"] = long["epochs"].map(epochs_label)
    stats = aggregate(long, rows + columns)
    if stats.empty:
        empty = pd.DataFrame()
        return Table(empty, empty, empty, title)
    row_order = list(dict.fromkeys(tuple(r) for r in stats[rows].itertuples(index=False)))
    wide = stats.set_index(rows + columns)[["mean", "std", "n"]].unstack(columns)
    wide = wide.reindex(pd.MultiIndex.from_tuples(row_order, names=rows) if len(rows) > 1
                        else pd.Index([r[0] for r in row_order], name=rows[0]))
    tables = {}
    for stat in ("mean", "std", "n"):
        frame = wide[stat]
        if column_order is not None:
            present = set(frame.columns)
            frame = frame[[c for c in column_order if c in present]
                          + [c for c in frame.columns if c not in set(column_order)]]
        tables[stat] = frame
    sources = dict(long.loc[long["published"].astype(bool), ["name", "source"]].drop_duplicates("name")
                   .itertuples(index=False, name=None))
    return Table(tables["mean"], tables["std"], tables["n"], title, sources)


def _labels_order(labels: str) -> tuple:
    """All labels first, then label fractions from the largest, then subset files by name."""
    if not labels:
        return (0, 0.0, "")
    percent = labels.removesuffix("% labels")
    try:
        return (1, -float(percent), "")
    except ValueError:
        return (2, 0.0, labels)


def table4(long: pd.DataFrame, linear_epoch: str = "best") -> Table:
    """SimSiam Table 4 shape: kNN and linear top-1 by method and pretraining epochs, per dataset; each
    low-shot label set in its own linear columns.

    ``linear_epoch``: ``best`` (main_lincls' headline) or ``last``; published rows show their ``top1``.
    """
    if linear_epoch not in LINEAR_EPOCH_METRICS:
        raise UserError(f"unknown linear epoch {linear_epoch!r}; choose from {', '.join(LINEAR_EPOCH_METRICS)}")
    linear = long["protocol"].isin(["linear", "linear-cached"]) & ~long["published"].astype(bool)
    wanted = linear.map({True: LINEAR_EPOCH_METRICS[linear_epoch], False: "top1"})
    sel = long[long["protocol"].isin(list(TABLE4_COLUMNS)) & (long["metric"] == wanted)].copy()
    kinds = sorted(set(zip(sel["protocol"], sel["labels"])),
                   key=lambda kind: (list(TABLE4_COLUMNS).index(kind[0]), _labels_order(kind[1])))
    columns = {kind: TABLE4_COLUMNS[kind[0]].format(labels=f"{kind[1]}, " if kind[1] else "", epoch=linear_epoch)
               for kind in kinds}
    sel["column"] = [columns[kind] for kind in zip(sel["protocol"], sel["labels"])]
    order = [(d, c) for d in dict.fromkeys(sel["dataset"]) for c in columns.values()]
    table = pivot(sel, ["name", "epochs"], ["dataset", "column"], "kNN and linear top-1 accuracy (%)", order)
    if linear.any():
        table.notes.append(LINEAR_EPOCH_NOTES[linear_epoch])
    return table


def detection_metric(metric: str) -> tuple[str, str] | None:
    """``("box"|"mask", "AP"|"AP50"|"AP75")`` for a detection metric name, None for others.

    Accepts ``AP``, ``bbox/AP``, ``bbox.AP``, ``box_AP`` (boxes) and ``mask_AP``, ``segm/AP``,
    ``segm.AP`` (masks), with 50 / 75 variants; other metrics (APs, APm, ...) are not tabulated.
    """
    if (match := _MASK.match(metric)):
        return "mask", match.group(1)
    if (match := _BOX.match(metric)):
        return "box", match.group(1)
    return None


def task_label(dataset: str, kind: str) -> str:
    """Table 5 column group: ``VOC07``, ``VOC07+12`` (boxes), ``COCO det``, ``COCO mask``, ``<name> det``..."""
    label = TASK_LABELS.get(dataset.lower(), dataset)
    if label.startswith("VOC") and kind == "box":
        return label
    return f"{label} {'det' if kind == 'box' else 'mask'}"


def table5(long: pd.DataFrame) -> Table:
    """SimSiam Table 5 shape: AP50 / AP / AP75 per transfer task, means over trials."""
    sel = long[long["protocol"] == "transfer"].copy()
    parsed = sel["metric"].map(detection_metric)
    sel = sel[parsed.notna()]
    parsed = parsed[parsed.notna()]
    sel["task"] = [task_label(d, kind) for d, (kind, _) in zip(sel["dataset"], parsed)]
    sel["metric"] = [m for _, m in parsed]
    tasks = sorted(set(sel["task"]), key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))
    order = [(t, m) for t in tasks for m in DETECTION_METRICS]
    return pivot(sel, ["name", "epochs"], ["task", "metric"], "Transfer to detection (AP)", order)


def custom_pivot(long: pd.DataFrame, rows: list[str], columns: list[str],
                 metrics: list[str] | None = None) -> Table:
    """Any fields as rows and columns, optionally only some metrics; ``labels`` joins the columns when
    the records hold several label sets, so low-shot and full-label probes are never averaged together."""
    if metrics:
        long = long[long["metric"].isin(metrics)]
    if "labels" not in rows + columns and long["labels"].nunique() > 1:
        columns = columns + ["labels"]
    return pivot(long, rows, columns, "")


def best_mask(table: Table, threshold: float | None = 0.5, decimals: int = 1) -> pd.DataFrame:
    """True where a mean is within ``threshold`` below its column's best (higher is better).

    Compared at the shown precision (means rounded to ``decimals``), so a reader can check the rule
    from the table itself. ``threshold`` None marks nothing.
    """
    if threshold is None or table.empty:
        return pd.DataFrame(False, index=table.mean.index, columns=table.mean.columns)
    shown = table.mean.astype(float).round(decimals)
    best = shown.max(axis=0)
    return shown.ge(best - threshold - 1e-9, axis=1) & shown.notna()


def cell_text(mean: float, std: float, n: float, decimals: int = 1) -> str:
    """``mean ± std (n=N)``; the std only for n > 1, ``(n=N)`` only when n is known; empty for NaN."""
    if mean is None or pd.isna(mean):
        return ""
    text = f"{mean:.{decimals}f}"
    if not pd.isna(std) and (pd.isna(n) or n > 1):
        text += f" ± {std:.{decimals}f}"
    if not pd.isna(n):
        text += f" (n={int(n)})"
    return text


def cell_texts(table: Table, decimals: int = 1) -> pd.DataFrame:
    """The shown text of every cell."""
    texts = [[cell_text(m, s, k, decimals) for m, s, k in zip(*row)]
             for row in zip(table.mean.to_numpy(), table.std.to_numpy(), table.n.to_numpy())]
    return pd.DataFrame(texts, index=table.mean.index, columns=table.mean.columns)


def tidy(table: Table, threshold: float | None = 0.5, decimals: int = 1) -> pd.DataFrame:
    """One row per cell: row and column keys, mean, std, n, bold, source — the CSV output."""
    bold = best_mask(table, threshold, decimals)
    parts = {"mean": table.mean, "std": table.std, "n": table.n, "bold": bold}
    long = pd.concat({k: v.stack(list(range(v.columns.nlevels)), future_stack=True)
                      for k, v in parts.items()}, axis=1).reset_index()
    long = long[long["mean"].notna()].reset_index(drop=True)
    long["bold"] = long["bold"].astype(bool)
    if "name" in long:
        long["source"] = [table.sources.get(name, "this toolkit") for name in long["name"]]
    return long

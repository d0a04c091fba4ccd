"""The SimSiam paper's empirical study as a suite's closing output (suite key ``study: NAME``).

A study file (``configs/reference/simsiam_study.csv``, columns ``STUDY_COLUMNS``) lists each experiment
of the paper with its variants: the suite's pretraining run of the variant (``name``), the paper's setting,
its ImageNet linear top-1 (ResNet-50, 100 epochs) and verdict. Per experiment the suite prints and writes
a table (``tables/study_<experiment>``: md, tex, csv, html) setting our run beside the paper's: its kNN
top-1 (the suite's kNN record of the run's final checkpoint), the collapse monitor and loss of its last
epoch (``metrics.jsonl``) and our verdict (:func:`run_verdict`). A variant whose pretrain entry has
``seeds`` has one run (:class:`Trial`) per seed: its row gives the kNN top-1 as mean ± std, each seed's
other cells, and the verdict of the majority (:func:`majority_verdict`). Figures: ``plots/study_fig2`` and
``plots/study_fig2_long`` (the runs' loss, collapse std and kNN monitor by epoch, as the paper's Fig. 2) and
``plots/study_<experiment>`` (our kNN top-1 as bars, the paper's top-1 as markers).
"""
from __future__ import annotations

import csv
import html
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from pretrain.collapse import collapsed_floor, healthy_std, is_collapsed  # noqa: E402
from pretrain.defaults import PRETRAIN_DEFAULTS  # noqa: E402
from simsiam_eval.atomic import atomic_write_text  # noqa: E402
from simsiam_eval.config import flatten_values, read_yaml  # noqa: E402
from simsiam_eval.errors import UserError  # noqa: E402
from simsiam_eval.report.measurements import STUDY_COLUMNS, reference_dir  # noqa: E402
from simsiam_eval.report.plots import draw_line, epoch_frame, read_jsonl, save_figure  # noqa: E402
from simsiam_eval.report.render import escape_latex  # noqa: E402
from simsiam_eval.report.tables import cell_text  # noqa: E402
from simsiam_eval.results.records import record_dataset  # noqa: E402
from simsiam_eval.suite.spec import PretrainRun, Suite  # noqa: E402

WORKS, COLLAPSES, NO_CONVERGENCE, NOT_RUN = "works", "collapses", "does not converge", "not run"
VERDICTS = (WORKS, COLLAPSES, NO_CONVERGENCE)
# The cosine loss is -mean cos(p, sg(z)), in [-1, 1]. A run whose last epoch ends above -0.5 has predictions
# less than 0.5 cosine-similar to their targets on average: its predictor has not learnt the other view.
# (Other similarities have no such scale: only a non-finite loss counts for them.)
COSINE_CONVERGED_LOSS = -0.5
EXPERIMENT_TITLES = {
    "fig2": "Fig. 2: stop-gradient", "table1": "Table 1: predictor", "table2": "Table 2: batch size",
    "table3": "Table 3: BatchNorm on the MLP heads", "similarity": "Sec. 4.5: similarity",
    "symmetrization": "Sec. 4.6: symmetrization", "alternation": "Sec. 5: multi-step alternation",
    "expectation": "Sec. 5: expectation over augmentations", "momentum": "Sec. 6 / Fig. 3: momentum encoder",
    "fig2_long": "Fig. 2 and Table 1 (a) at length: 50 epochs, constant lr"}
CURVES_EXPERIMENTS = ("fig2", "fig2_long")  # drawn as curves over epochs; the other experiments as bars
TABLE_COLUMNS = ("variant", "paper setting", "paper top-1", "paper verdict", "kNN top-1 (ours)", "pool5 std x sqrt(d)",
                 "collapse std x sqrt(d) (final epoch)", "median batch", "final loss", "our verdict", "agrees")
PAPER_LABEL = "paper, ImageNet linear 100 ep"
PAPER_OFFSET = 0.4  # the paper's marker beside its bar, clear of the verdict label on top of the bar
LINE_STYLES = ("-", "--", ":", "-.")  # the seeds of one variant in Fig. 2


@dataclass(frozen=True)
class Variant:
    """One row of a study file."""

    experiment: str
    name: str  # the suite's pretraining run
    paper_setting: str
    paper_top1: float | None
    paper_verdict: str
    source: str


@dataclass(frozen=True)
class RunLog:
    """A pretraining run's resolved config (``config.yaml``) and per-epoch metrics (``metrics.jsonl``)."""

    config: dict
    epochs: pd.DataFrame  # report.plots.epoch_frame: indexed by epoch

    def setting(self, key: str) -> Any:
        return run_setting(self.config, key)

    @property
    def last(self) -> dict:
        return self.epochs.iloc[-1].to_dict()


def resolve_study(name: str, relative_to: Path | None = None) -> Path:
    """A study file by path (from the suite file's folder, or as given) or packaged name
    (``simsiam_study`` -> ``configs/reference/simsiam_study.csv``)."""
    candidates = ([relative_to / name] if relative_to is not None else []) + [Path(name)]
    candidates.append(reference_dir() / (name if name.endswith(".csv") else f"{name}.csv"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"study file not found: {name} (looked in {', '.join(str(c) for c in candidates)})")


def _variant(path: Path, line: int, row: Mapping[str, str]) -> Variant:
    """The checked row of a study file."""
    if not row["experiment"] or not row["name"] or not row["source"]:
        raise UserError(f"{path}: line {line}: experiment, name and source are required")
    if row["verdict"] not in VERDICTS:
        raise UserError(f"{path}: line {line}: verdict {row['verdict']!r} is not one of {', '.join(VERDICTS)}")
    try:
        value = float(row["value"]) if row["value"] else None
    except ValueError:
        raise UserError(f"{path}: line {line}: value {row['value']!r} is not a number") from None
    return Variant(row["experiment"], row["name"], row["paper_setting"], value, row["verdict"], row["source"])


def read_study(path: Path) -> list[Variant]:
    """The variants of a study file, in its order."""
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames != STUDY_COLUMNS:
            raise UserError(f"{path}: a study file has the columns {','.join(STUDY_COLUMNS)}, got {reader.fieldnames}")
        return [_variant(path, line, row) for line, row in enumerate(reader, 2)]


def run_setting(config: Mapping, key: str) -> Any:
    """A dotted key of a run's config, else its pretraining default (a config of an older version)."""
    value = flatten_values(config).get(key)
    return flatten_values(PRETRAIN_DEFAULTS)[key] if value is None else value


def run_verdict(config: Mapping, last: Mapping) -> str:
    """Our verdict on a run from its config and last epoch: ``collapses`` when the collapse std is below
    the run's collapse threshold (pretrain.collapse, the training warning's rule; the batch per process
    is taken as the whole batch, the config not saying over how many processes it was split), else
    ``does not converge`` when the loss is not finite or, with cosine similarity, above
    :data:`COSINE_CONVERGED_LOSS`; else ``works``."""
    dim, batch = run_setting(config, "model.dim"), run_setting(config, "batch_size")
    if is_collapsed(last["collapse_std"], dim, batch, run_setting(config, "monitor.collapse_ratio")):
        return COLLAPSES
    loss = last["loss"]
    if not math.isfinite(loss) or (run_setting(config, "loss.similarity") == "cosine" and loss > COSINE_CONVERGED_LOSS):
        return NO_CONVERGENCE
    return WORKS


def read_run(folder: Path) -> RunLog | None:
    """The run in ``folder``; None before it has logged an epoch."""
    config, log = folder / "config.yaml", folder / "metrics.jsonl"
    if not config.is_file() or not log.is_file():
        return None
    epochs = epoch_frame(read_jsonl(log))
    return RunLog(read_yaml(config), epochs) if not epochs.empty else None


def knn_record(records: Iterable[Mapping], run: PretrainRun) -> Mapping | None:
    """The latest kNN record of the run's final checkpoint (named after the run)."""
    found = [r for r in records if r["protocol"] == "knn" and (r.get("checkpoint") or {}).get("name") == run.name
             and PurePath(str(r["checkpoint"].get("path") or "")).name == run.final_checkpoint.name]
    return max(found, key=lambda r: str(r.get("started") or ""), default=None)


def chance_level(record: Mapping) -> float | None:
    """100 / number of classes of the record's data (``data.num_classes``, else ``metrics.num_classes``)."""
    classes = (record.get("data") or {}).get("num_classes") or record["metrics"].get("num_classes")
    return 100.0 / classes if classes else None


def collapse_level(log: RunLog, key: str = "collapse_std") -> float | None:
    """The last epoch's collapse std x sqrt(d) (``key``: the mean over its batches, or
    ``collapse_std_median``): ~1 healthy, collapsed_floor(batch) collapsed; None if not logged."""
    value = log.last.get(key)
    return None if value is None or pd.isna(value) else value * math.sqrt(log.setting("model.dim"))


def reference_levels(dim: int, batch: int) -> tuple[float, float]:
    """The collapse panel's lines: the healthy std 1/sqrt(d) and the std of a batch collapsed but for one
    outlier, collapsed_floor(batch)/sqrt(d)."""
    return healthy_std(dim), collapsed_floor(batch) * healthy_std(dim)


@dataclass(frozen=True)
class Trial:
    """One pretraining run of a variant (one of its seeds): its log and the kNN record of its final checkpoint."""

    name: str
    log: RunLog | None
    record: Mapping | None

    @property
    def verdict(self) -> str:
        return NOT_RUN if self.log is None else run_verdict(self.log.config, self.log.last)


def _number(value: float | None, decimals: int, missing: str = NOT_RUN) -> str:
    return missing if value is None else f"{value:.{decimals}f}"


def run_cells(log: RunLog | None) -> tuple[str, str, str, str]:
    """A run's collapse std x sqrt(d) (mean and median over the last epoch's batches; ``-`` for a log
    older than the median) and loss of its last epoch, and our verdict; ``not run`` without it."""
    if log is None:
        return NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN
    return (_number(collapse_level(log), 3), _number(collapse_level(log, "collapse_std_median"), 3, "-"),
            _number(log.last["loss"], 3), run_verdict(log.config, log.last))


def spread_cell(record: Mapping | None) -> str:
    """The record's pool5 std with two significant digits (it spans decades); ``-`` for an older record."""
    if record is None:
        return NOT_RUN
    feature_std = record["metrics"].get("feature_std")
    return "-" if feature_std is None else f"{feature_std:.2g}"


def top1_summary(trials: list[Trial]) -> tuple[float | None, float, int]:
    """Mean, sample std (NaN for one) and number of the trials' kNN top-1; mean None without a record."""
    values = pd.Series([t.record["metrics"]["top1"] for t in trials if t.record], dtype=float)
    return (None if values.empty else float(values.mean())), float(values.std()), len(values)


def majority_verdict(trials: list[Trial]) -> tuple[str | None, str]:
    """The verdict of more than half of the trials (None without such a majority) and its cell:
    ``works (2 of 3)``, else ``split: ...`` with the count of each; ``not run`` when none has run."""
    verdicts = [t.verdict for t in trials]
    if all(v == NOT_RUN for v in verdicts):
        return None, NOT_RUN
    counts = Counter(verdicts)
    verdict, count = counts.most_common(1)[0]
    if verdict != NOT_RUN and count > len(trials) / 2:
        return verdict, f"{verdict} ({count} of {len(trials)})"
    return None, "split: " + ", ".join(f"{v} {c}" for v, c in sorted(counts.items()))


def table_row(variant: Variant, trials: list[Trial]) -> dict[str, str]:
    """One variant: the paper's setting, top-1 and verdict beside our run's; with several trials (seeds)
    the kNN top-1 as mean ± std (n), the other run cells one per trial joined by `` / ``, and the
    majority verdict."""
    if len(trials) == 1:
        (trial,) = trials
        collapse, median, loss, verdict = run_cells(trial.log)
        ours = verdict
        top1 = _number(trial.record["metrics"]["top1"], 1) if trial.record else NOT_RUN
        spread = spread_cell(trial.record)
    else:
        cells = [run_cells(t.log) for t in trials]
        collapse, median, loss = (" / ".join(c[i] for c in cells) for i in range(3))
        ours, verdict = majority_verdict(trials)
        mean, std, n = top1_summary(trials)
        top1 = NOT_RUN if mean is None else cell_text(mean, std, n)
        spread = " / ".join(spread_cell(t.record) for t in trials)
    agrees = NOT_RUN if verdict == NOT_RUN else "yes" if ours == variant.paper_verdict else "no"
    cells = (variant.name, variant.paper_setting, _number(variant.paper_top1, 1, "-"), variant.paper_verdict,
             top1, spread, collapse, median, loss, verdict, agrees)
    return dict(zip(TABLE_COLUMNS, cells))


def table_notes(variants: list[Variant], trials: Mapping[str, list[Trial]]) -> list[str]:
    """What the columns compare, the kNN chance level, how seeds are summarised, unfinished runs and the
    paper's sources."""
    everything = [t for v in dict.fromkeys(v.name for v in variants) for t in trials[v]]
    found = [t.record for t in everything if t.record]
    chances = sorted({f"{record_dataset(r)} {chance:.1f}%" for r in found if (chance := chance_level(r))})
    notes = [f"paper top-1: ImageNet linear, ResNet-50, 100 epochs; ours: kNN top-1 of the run's final checkpoint "
             f"(chance level: {', '.join(chances) or 'unknown'})",
             f"our verdict (last epoch): collapses below the run's collapse threshold (monitor.collapse_ratio of the way "
             f"from the collapsed floor 2/sqrt(batch) up to 1, x 1/sqrt(d)); does not converge with a non-finite "
             f"loss or a cosine loss above {COSINE_CONVERGED_LOSS:g}; else works",
             "pool5 std: the spread of the final checkpoint's backbone features over the kNN bank, the collapse "
             "std of pool5 (0: every image gets the same features, the backbone has collapsed; '-' for a kNN record "
             "older than it)",
             "collapse std: the mean over the last epoch's batches; median batch: their median (a batch collapsed "
             "onto one point but for the one image its output BatchNorm forces away reads the floor 2/sqrt(batch))"]
    seeded = [v for v in dict.fromkeys(v.name for v in variants) if len(trials[v]) > 1]
    if seeded:
        notes.append(f"{', '.join(seeded)}: one run per seed (NAME/seedS); kNN top-1 as mean ± sample std (n runs), the other "
                     f"run cells one value per seed joined by ' / ', our verdict the one of more than half of the "
                     f"seeds (else split)")
    for trial in everything:
        log = trial.log
        if log and log.epochs.index[-1] < log.setting("epochs"):
            notes.append(f"{trial.name}: unfinished, last logged epoch {log.epochs.index[-1]} of {log.setting('epochs')}")
    notes += [f"{', '.join(v.name for v in variants if v.source == source)}: {source}"
              for source in dict.fromkeys(v.source for v in variants)]
    return notes


def markdown(frame: pd.DataFrame, notes: list[str]) -> str:
    return frame.to_markdown(index=False, disable_numparse=True) + "\n" + "".join(f"\n{n}" for n in notes) + "\n"


def write_study_table(frame: pd.DataFrame, prefix: Path, title: str, notes: list[str]) -> list[Path]:
    """``prefix``.md, .tex, .csv and .html, as report/render.write_table writes a table."""
    caption = ". ".join([title, *notes])
    latex = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    texts = {"md": markdown(frame, notes), "csv": frame.to_csv(index=False),
             "tex": latex.to_latex(hrules=True, environment="table", caption=escape_latex(caption),
                                   position_float="centering"),
             "html": frame.style.hide(axis="index").set_caption(html.escape(caption)).to_html()}
    written = []
    for fmt, text in texts.items():
        path = prefix.with_name(f"{prefix.name}.{fmt}")
        atomic_write_text(text, path)
        written.append(path)
    return written


def plot_curves(title: str, logs: Mapping[str, RunLog], chances: list[float], stem: Path,
                variants: Mapping[str, str] | None = None) -> list[Path]:
    """The paper's Fig. 2 for our runs: training loss, collapse std (healthy level and collapsed floor)
    and, when the runs had a kNN monitor, its top-1 with the chance level; one line per run, the runs of
    one variant (``variants``: run name -> variant) in one colour, told apart by line style."""
    has_knn = any("knn_top1" in log.epochs and log.epochs["knn_top1"].notna().any() for log in logs.values())
    fig, axes = plt.subplots(1, 3 if has_knn else 2, figsize=(12 if has_knn else 8, 3.4))
    group_of = {name: (variants or {}).get(name, name) for name in logs}
    groups = list(dict.fromkeys(group_of.values()))
    seen: Counter = Counter()
    for name, log in logs.items():
        group = group_of[name]
        style = {"color": f"C{groups.index(group) % 10}", "linestyle": LINE_STYLES[seen[group] % len(LINE_STYLES)]}
        seen[group] += 1
        draw_line(axes[0], log.epochs["loss"], name, **style)
        draw_line(axes[1], log.epochs["collapse_std"], name, **style)
        if has_knn and "knn_top1" in log.epochs:
            draw_line(axes[2], log.epochs["knn_top1"], name, **style)
    heights = [log.epochs["collapse_std"].max() for log in logs.values()]  # NaN: a run that diverged (skipped)
    for dim, batch in sorted({(log.setting("model.dim"), log.setting("batch_size")) for log in logs.values()}):
        healthy, floor = reference_levels(dim, batch)
        axes[1].axhline(healthy, color="grey", linestyle="--", label=f"1/sqrt(d), d={dim}")
        axes[1].axhline(floor, color="grey", linestyle=":", label=f"collapsed floor, batch {batch}")
        heights.append(healthy)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="std of z/||z||", xlabel="epoch", ylim=(0, 1.15 * pd.Series(heights).max()))
    if has_knn:
        for chance in chances:
            axes[2].axhline(chance, color="grey", linestyle=":", label=f"chance {chance:.1f}%")
        axes[2].set(title="kNN monitor top-1 (%)", xlabel="epoch")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title} (ours)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_bars(title: str, frame: pd.DataFrame, variants: list[Variant], trials: Mapping[str, list[Trial]],
              chances: list[float], stem: Path) -> list[Path]:
    """Our kNN top-1 per variant as bars (the mean over its seeds, their std as error bars) labelled with our
    verdict, the paper's top-1 as markers on the same % axis, the kNN chance level as a line."""
    x = range(len(variants))
    summaries = [top1_summary(trials[v.name]) for v in variants]
    ours = [mean or 0.0 for mean, _, _ in summaries]
    errors = [0.0 if math.isnan(std) else std for _, std, _ in summaries]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(variants) + 2), 3.8))
    bars = ax.bar(x, ours, width=0.6, yerr=errors if any(errors) else None, capsize=3, label="ours: kNN top-1")
    ax.bar_label(bars, labels=list(frame["our verdict"]), fontsize=7, padding=2)
    paper = [(i, v.paper_top1) for i, v in enumerate(variants) if v.paper_top1 is not None]
    ax.scatter([i + PAPER_OFFSET for i, _ in paper], [v for _, v in paper], marker="D", color="black", zorder=3,
               label=PAPER_LABEL)
    for chance in chances:
        ax.axhline(chance, color="grey", linestyle=":", label=f"chance (kNN) {chance:.1f}%")
    ax.set_xticks(list(x), [v.name for v in variants], rotation=15, ha="right")
    ax.set(title=title, ylabel="top-1 (%)", ylim=(0, 105))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    fig.tight_layout()
    return save_figure(fig, stem)


def write_experiment(suite: Suite, experiment: str, variants: list[Variant],
                     trials: Mapping[str, list[Trial]]) -> list[Path]:
    """Print and write one experiment's table; draw its figure."""
    title = EXPERIMENT_TITLES.get(experiment, experiment)
    frame = pd.DataFrame([table_row(v, trials[v.name]) for v in variants], columns=TABLE_COLUMNS)
    notes = table_notes(variants, trials)
    print(f"\n## {title}\n\n{markdown(frame, notes)}")
    stem = f"study_{experiment}"
    written = write_study_table(frame, suite.output_dir / "tables" / stem, title, notes)
    names = list(dict.fromkeys(v.name for v in variants))  # a variant listed twice draws once
    ran = [t for name in names for t in trials[name]]
    chances = sorted({c for t in ran if t.record and (c := chance_level(t.record))})
    plots = suite.output_dir / "plots" / stem
    if experiment not in CURVES_EXPERIMENTS:
        return written + plot_bars(title, frame, variants, trials, chances, plots)
    logs = {t.name: t.log for t in ran if t.log}
    if not logs:
        print(f"no {stem} figure: none of its runs has logged an epoch")
        return written
    variant_of = {t.name: name for name in names for t in trials[name]}
    return written + plot_curves(title, logs, chances, plots, variant_of)


def write_study(suite: Suite, records: list[dict]) -> list[Path]:
    """The study's tables and figures from the suite's runs and records (``suite.study``); a variant
    whose pretrain entry has ``seeds`` has one trial per seed."""
    variants = read_study(suite.study)
    names = dict.fromkeys(v.name for v in variants)
    trials = {name: [Trial(run.name, read_run(Path(run.config.output_dir)), knn_record(records, run))
                     for run in suite.pretrain if run.entry == name] for name in names}
    written = []
    for experiment in dict.fromkeys(v.experiment for v in variants):
        written += write_experiment(suite, experiment, [v for v in variants if v.experiment == experiment], trials)
    return written

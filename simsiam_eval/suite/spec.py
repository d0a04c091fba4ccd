"""Read and check a suite file (SUITE.yaml): checkpoints, pretraining runs, datasets, evaluations.

The file goes through the config system's YAML reader, so ``_BASE_`` works and packaged suites
resolve by name (``suites/NAME`` -> ``configs/suites/NAME.yaml``). Every evaluation's keys are
checked against its protocol's defaults; an unknown key is an error naming the file and the key.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from simsiam_eval.config import Config, flatten_values, load_config, parse_overrides, read_yaml, resolve_config_path
from simsiam_eval.errors import UserError
from simsiam_eval.suite.launchers import SlurmOptions

TOP_KEYS = ("name", "output_dir", "results", "cache_dir", "checkpoints", "pretrain", "seeds", "datasets",
            "evaluations", "jobs", "launcher", "study")
CHECKPOINT_KEYS = ("name", "path", "glob", "random", "tags", "format")
CHECKPOINT_SOURCES = ("path", "glob", "random")
PRETRAIN_KEYS = ("name", "config", "overrides", "tags", "init", "seeds")
PROTOCOLS = ("knn", "linear", "transfer")
# Keys of a protocol's config the runner sets for each job; a suite file may not set them in an evaluation.
SET_BY_SUITE = ("checkpoint", "format", "train", "val", "output_dir", "output", "results", "name", "tags")
DEFAULT_OUTPUT_ROOT = Path("runs") / "suites"


def protocol_defaults(protocol: str) -> dict:
    """The config defaults of an evaluation protocol."""
    if protocol == "knn":
        from simsiam_eval.knn.defaults import KNN_DEFAULTS
        return KNN_DEFAULTS
    if protocol == "linear":
        from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
        return LINEAR_DEFAULTS
    from transfer.defaults import TRANSFER_DEFAULTS
    return TRANSFER_DEFAULTS


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint to evaluate: a file, a ``random:`` spec, or the final checkpoint of a pretraining run."""

    name: str
    source: str
    tags: tuple[str, ...] = ()
    format: str = "auto"
    pretrain: str | None = None  # the suite's pretraining run that writes ``source``
    sweep: str | None = None  # the glob (over one run's checkpoints) this entry came from: an epoch sweep


@dataclass(frozen=True, eq=False)
class PretrainRun:
    """A SimSiam pretraining run of the suite; its final checkpoint is evaluated under its name."""

    name: str
    config: Config  # resolved, output_dir inside the suite folder
    init: str | None = None  # evaluate the run's initial weights too, under this name
    variant: str = ""  # the pretrain entry it comes from (``seeds``: one run per seed); "" = ``name``

    @property
    def entry(self) -> str:
        """The name of the pretrain entry: the run's own name, or the shared one of an entry's seeds."""
        return self.variant or self.name

    @property
    def init_checkpoint(self) -> Path:
        from pretrain.checkpointing import INIT_NAME

        return Path(self.config.output_dir) / INIT_NAME

    @property
    def final_checkpoint(self) -> Path:
        from pretrain.checkpointing import checkpoint_path

        return checkpoint_path(Path(self.config.output_dir), self.config.epochs - 1)


@dataclass(frozen=True)
class Evaluation:
    """An evaluation: a protocol, the keys of its config the suite sets, the data sets it runs on."""

    name: str
    protocol: str
    keys: Mapping[str, Any]
    datasets: tuple[str, ...] = ()


@dataclass
class Suite:
    path: Path
    name: str
    output_dir: Path
    results: Path
    cache_dir: str
    checkpoints: list[CheckpointEntry]
    pretrain: list[PretrainRun]
    datasets: dict[str, dict[str, str]]
    evaluations: dict[str, Evaluation]
    jobs: list[dict] | None
    overrides: tuple[str, ...] = field(default=())  # the key=value items it was read with
    launcher: SlurmOptions = field(default_factory=SlurmOptions)  # the Slurm options of --launcher slurm
    study: Path | None = None  # a study file (suite/study.py): its tables and plots close the suite


def _fail(path: Path, where: str, problem: str) -> UserError:
    return UserError(f"{path}: {where}: {problem}")


def _check_keys(path: Path, where: str, entry: Any, allowed: Iterable[str]) -> dict:
    if not isinstance(entry, Mapping):
        raise _fail(path, where, f"expected a mapping, got {entry!r}")
    allowed = tuple(allowed)
    for key in entry:
        if key not in allowed:
            raise _fail(path, where, f"unknown key '{key}' (allowed: {', '.join(allowed)})")
    return dict(entry)


def _tags(path: Path, where: str, value: Any) -> tuple[str, ...]:
    value = value or []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise _fail(path, where, f"tags must be a list of strings, got {value!r}")
    return tuple(value)


def _list_item(items: list, part: str, key: str) -> Any:
    if not part.isdigit() or int(part) >= len(items):
        raise UserError(f"override '{key}': '{part}' is not an index of a list of {len(items)}")
    return items[int(part)]


def apply_overrides(tree: dict, items: Iterable[str]) -> dict:
    """Set ``a.b.c=value`` items (values parsed as YAML) in the raw suite tree; a number picks an item of
    a list (``pretrain.0.overrides.epochs=2``)."""
    for key, text in parse_overrides(items).items():
        *parents, leaf = key.split(".")
        if (parents[0] if parents else leaf) not in TOP_KEYS:
            raise UserError(f"override '{key}': unknown suite key (suite keys: {', '.join(TOP_KEYS)})")
        node = tree
        for part in parents:
            node = _list_item(node, part, key) if isinstance(node, list) else node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise UserError(f"override '{key}': '{part}' is not a section")
        if isinstance(node, list):
            raise UserError(f"override '{key}': '{parents[-1]}' is a list; set a key of one of its items")
        try:
            node[leaf] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            node[leaf] = text
    return tree


def file_stem(path: str | Path) -> str:
    """``checkpoint_0099.pth.tar`` -> ``checkpoint_0099``."""
    return Path(path).name.split(".")[0] or Path(path).name


def _checkpoints(path: Path, entries: Any) -> list[CheckpointEntry]:
    if not isinstance(entries, list):
        raise _fail(path, "checkpoints", f"expected a list, got {entries!r}")
    found = []
    for i, raw in enumerate(entries):
        where = f"checkpoints[{i}]"
        entry = _check_keys(path, where, raw, CHECKPOINT_KEYS)
        sources = [k for k in CHECKPOINT_SOURCES if k in entry]
        if len(sources) != 1:
            raise _fail(path, where, f"give exactly one of {', '.join(CHECKPOINT_SOURCES)}")
        kind, value = sources[0], str(entry[sources[0]])
        tags, fmt = _tags(path, where, entry.get("tags")), str(entry.get("format", "auto"))
        if kind == "glob":
            matches = sorted(glob.glob(value))
            if not matches:
                raise _fail(path, where, f"glob '{value}' matches no file")
            prefix = f"{entry['name']}/" if entry.get("name") else ""
            found += [CheckpointEntry(prefix + file_stem(m), m, tags, fmt, sweep=value) for m in matches]
            continue
        if kind == "random" and not value.startswith("random:"):
            value = f"random:{value}"
        name = entry.get("name") or (value if kind == "random" else file_stem(value))
        found.append(CheckpointEntry(str(name), value, tags, fmt))
    return found


def _seeds(path: Path, where: str, value: Any) -> tuple[int, ...] | None:
    """A checked ``seeds`` list: distinct non-negative integers; None when not given."""
    if value is None:
        return None
    if (not isinstance(value, list) or not value or len(set(value)) != len(value)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        raise _fail(path, where, f"seeds must be a list of distinct non-negative integers, got {value!r}")
    return tuple(value)


def _pretrain_runs(path: Path, entries: Any, output_dir: Path, suite_seeds: tuple[int, ...] | None) -> list[PretrainRun]:
    """The runs of the ``pretrain:`` entries: one per entry, or with ``seeds`` (the entry's, else the
    suite's) one per seed, named ``NAME/seedS`` (folder ``pretrain/NAME/seedS``, config key ``seed``)."""
    from pretrain.defaults import PRETRAIN_DEFAULTS

    runs = []
    for i, raw in enumerate(entries or []):
        where = f"pretrain[{i}]"
        entry = _check_keys(path, where, raw, PRETRAIN_KEYS)
        if not entry.get("name"):
            raise _fail(path, where, "a pretraining run needs a name (its checkpoint is named by it)")
        name, init = str(entry["name"]), str(entry["init"]) if entry.get("init") else None
        overrides = entry.get("overrides") or {}
        items = ["progress=false"]  # the run's output goes to its log file
        items += [str(item) for item in overrides] if isinstance(overrides, list) else []
        values = overrides if isinstance(overrides, Mapping) else None
        config = resolve_config_path(entry["config"], path.parent) if entry.get("config") else None
        seeds = _seeds(path, f"{where}.seeds", entry["seeds"]) if "seeds" in entry else suite_seeds
        if seeds is None:
            cfg = load_config(config, PRETRAIN_DEFAULTS, [*items, f"output_dir={output_dir / 'pretrain' / name}"],
                              values=values, values_source=f"{path}: {where}.overrides")
            runs.append(PretrainRun(name, cfg, init))
            continue
        if "seed" in flatten_values(values or {}) or any(item.split("=")[0].strip() == "seed" for item in items):
            raise _fail(path, where, "give the seed in 'seeds' or in 'overrides', not both")
        for seed in seeds:
            folder = output_dir / "pretrain" / name / f"seed{seed}"
            cfg = load_config(config, PRETRAIN_DEFAULTS, [*items, f"seed={seed}", f"output_dir={folder}"],
                              values=values, values_source=f"{path}: {where}.overrides")
            runs.append(PretrainRun(f"{name}/seed{seed}", cfg, init and f"{init}/seed{seed}", variant=name))
    return runs


def _study(path: Path, value: Any, runs: list[PretrainRun]) -> Path | None:
    """The suite's study file (``study: NAME``, a path or a packaged name), each of whose variants must be
    a pretraining run of the suite."""
    if not value:
        return None
    from simsiam_eval.suite.study import read_study, resolve_study

    study = resolve_study(str(value), path.parent)
    missing = sorted({variant.name for variant in read_study(study)} - {run.entry for run in runs})
    if missing:
        raise _fail(path, "study", f"{study} names variants that are not pretrain entries of the suite: "
                                   f"{', '.join(missing)}")
    return study


def _datasets(path: Path, tree: Any) -> dict[str, dict[str, str]]:
    datasets = {}
    for name, raw in (tree or {}).items():
        entry = _check_keys(path, f"datasets.{name}", raw, ("train", "val"))
        if not entry.get("train") or not entry.get("val"):
            raise _fail(path, f"datasets.{name}", "give both train and val dataset specs")
        datasets[str(name)] = {"train": str(entry["train"]), "val": str(entry["val"])}
    return datasets


def _evaluations(path: Path, tree: Any, datasets: Mapping[str, Any]) -> dict[str, Evaluation]:
    if not isinstance(tree, Mapping) or not tree:
        raise _fail(path, "evaluations", "list at least one evaluation ({name: {protocol: knn|linear|transfer, ...}})")
    evaluations = {}
    for name, raw in tree.items():
        where = f"evaluations.{name}"
        if not isinstance(raw, Mapping):
            raise _fail(path, where, f"expected a mapping, got {raw!r}")
        keys = dict(raw)
        protocol = keys.pop("protocol", None)
        if protocol not in PROTOCOLS:
            raise _fail(path, f"{where}.protocol", f"expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        names = keys.pop("datasets", None)
        if protocol == "transfer" and names is not None:
            raise _fail(path, f"{where}.datasets", "a transfer evaluation names its data in 'task', not 'datasets'")
        if protocol != "transfer":
            if not isinstance(names, list) or not names:
                raise _fail(path, f"{where}.datasets", f"list the data sets to run on (defined: {', '.join(datasets)})")
            for dataset in names:
                if dataset not in datasets:
                    raise _fail(path, f"{where}.datasets", f"unknown data set '{dataset}' (defined: "
                                                           f"{', '.join(datasets) or 'none'})")
        for key in keys:
            if key.split(".")[0] in SET_BY_SUITE:
                raise _fail(path, f"{where}.{key}", "set by the suite for each job; remove it")
        load_config(None, protocol_defaults(protocol), values=keys, values_source=f"{path}: {where}")
        evaluations[str(name)] = Evaluation(str(name), protocol, keys, tuple(names or ()))
    return evaluations


def _explicit_jobs(path: Path, entries: Any, checkpoints: set[str], suite_evaluations: Mapping[str, Evaluation]):
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise _fail(path, "jobs", f"expected a list of {{checkpoint, evaluation, dataset}}, got {entries!r}")
    jobs = []
    for i, raw in enumerate(entries):
        where = f"jobs[{i}]"
        entry = _check_keys(path, where, raw, ("checkpoint", "evaluation", "dataset"))
        if entry.get("checkpoint") not in checkpoints:
            raise _fail(path, f"{where}.checkpoint", f"unknown checkpoint {entry.get('checkpoint')!r}")
        evaluation = suite_evaluations.get(entry.get("evaluation"))
        if evaluation is None:
            raise _fail(path, f"{where}.evaluation", f"unknown evaluation {entry.get('evaluation')!r}")
        if (evaluation.protocol == "transfer") != ("dataset" not in entry) or (
                "dataset" in entry and entry["dataset"] not in evaluation.datasets):
            raise _fail(path, f"{where}.dataset", f"give one of the evaluation's data sets "
                                                  f"({', '.join(evaluation.datasets) or 'none: transfer'})")
        jobs.append(entry)
    return jobs


def read_suite(source: str | Path, overrides: Iterable[str] = ()) -> Suite:
    """The checked suite of a file (a path or a packaged name such as ``suites/NAME``), with ``key=value``
    overrides of its keys (``output_dir=...``, ``evaluations.knn.k=[20]``)."""
    overrides = tuple(overrides)
    path = resolve_config_path(source)
    tree = apply_overrides(read_yaml(path), overrides)
    for key in tree:
        if key not in TOP_KEYS:
            raise _fail(path, key, f"unknown suite key (suite keys: {', '.join(TOP_KEYS)})")
    name = str(tree.get("name") or path.name.split(".")[0])
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _fail(path, "name", f"use letters, digits, '_', '.' and '-' only, got {name!r}")
    output_dir = Path(tree.get("output_dir") or DEFAULT_OUTPUT_ROOT / name)
    checkpoints = _checkpoints(path, tree.get("checkpoints") or [])
    runs = _pretrain_runs(path, tree.get("pretrain"), output_dir, _seeds(path, "seeds", tree.get("seeds")))
    checkpoints += [CheckpointEntry(run.name, str(run.final_checkpoint), ("pretrain",), "auto", run.name)
                    for run in runs]
    checkpoints += [CheckpointEntry(run.init, str(run.init_checkpoint), ("init",), "auto", run.name)
                    for run in runs if run.init]
    if not checkpoints:
        raise _fail(path, "checkpoints", "list at least one checkpoint or pretraining run")
    names = [c.name for c in checkpoints]
    if len(set(names)) != len(names):
        raise _fail(path, "checkpoints", f"names must be unique, repeated: "
                                         f"{', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    datasets = _datasets(path, tree.get("datasets"))
    evaluations = _evaluations(path, tree.get("evaluations"), datasets)
    return Suite(path=path, name=name, output_dir=output_dir,
                 results=Path(tree.get("results") or output_dir / "results.db"),
                 cache_dir=str(tree.get("cache_dir") or ""), checkpoints=checkpoints, pretrain=runs,
                 datasets=datasets, evaluations=evaluations,
                 jobs=_explicit_jobs(path, tree.get("jobs"), set(names), evaluations), overrides=overrides,
                 launcher=SlurmOptions.from_section(tree.get("launcher"), source=f"{path}: launcher"),
                 study=_study(path, tree.get("study"), runs))

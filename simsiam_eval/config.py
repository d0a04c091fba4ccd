"""The one config system: a defaults tree, YAML files with ``_BASE_`` inheritance, ``key=value`` overrides.

Every key a user sets must exist in the defaults; values are checked against the default's type.
"""
from __future__ import annotations

import copy
import difflib
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from simsiam_eval.atomic import atomic_write_text
from simsiam_eval.errors import UserError

BASE_KEY = "_BASE_"
# The repository's configs/ folder, which a wheel ships as the package data of simsiam_eval.configs.
SOURCE_TREE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class Config(dict):
    """A nested dict whose keys can also be read as attributes (``cfg.optim.base_lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _to_config(tree: Mapping) -> Config:
    return Config({k: _to_config(v) if isinstance(v, Mapping) else v for k, v in tree.items()})


def packaged_config_dir() -> Path:
    """Folder of the YAML presets: ``simsiam_eval/configs`` of an installed wheel, else the ``configs/``
    folder of the source checkout the package runs from (editable install). Always a real folder, as
    Detectron2 reads the files by path."""
    installed = files("simsiam_eval") / "configs"
    if not installed.is_dir():
        return SOURCE_TREE_CONFIGS
    if not isinstance(installed, Path):
        raise UserError(f"the presets in {installed} are not real files (a zipped install); "
                        "install simsiam-eval unzipped, e.g. with pip")
    return installed


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """Find a config by path, relative to another config, or by preset name (``pretrain/shapes_cpu``)."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name)
    stem = str(name) if str(name).endswith((".yaml", ".yml")) else f"{name}.yaml"
    candidates.append(packaged_config_dir() / stem)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"config file not found: {name} (looked in {', '.join(str(c) for c in candidates)})")


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config file and merge it over its ``_BASE_`` chain (each base: a path relative to the
    file, a path, or a preset name such as ``pretrain/shapes_cpu``); ``chain`` holds the files that
    include this one, to report loops."""
    if path.resolve() in chain:
        raise UserError(f"{path}: _BASE_ chain loops back to itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a config must be a mapping of keys, got {type(tree).__name__}")
    base = tree.pop(BASE_KEY, None)
    if base is None:
        return tree
    bases = base if isinstance(base, list) else [base]
    merged: dict = {}
    for entry in bases:
        base_path = resolve_config_path(entry, relative_to=path.parent)
        _deep_merge(merged, read_yaml(base_path, chain + (path.resolve(),)))
    _deep_merge(merged, tree)
    return merged


def _deep_merge(into: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        full = f"{prefix}{key}"
        keys.extend(_flat_keys(value, full + ".") if isinstance(value, Mapping) else [full])
    return keys


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the type of ``default``; convert where the conversion is lossless."""
    if default is None or value is None:
        return value
    expected = type(default)
    if isinstance(value, str) and expected is not str:
        if expected is bool and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if expected in (int, float) and isinstance(parsed, str):
            try:
                parsed = float(parsed) if expected is float else int(parsed)
            except ValueError:
                pass
        value = parsed
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise UserError(f"config key '{key}' ({source}): expected true/false, got {value!r}")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"config key '{key}' ({source}): expected an integer, got {value!r}")
    if expected in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, expected):
        raise UserError(f"config key '{key}' ({source}): expected {expected.__name__}, got {value!r}")
    return value


def _unknown_key_error(key: str, known: Iterable[str], source: str) -> UserError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config key '{key}' ({source}){hint}")


def _apply(tree: dict, defaults: Mapping, flat: Mapping[str, Any], source: str) -> None:
    known = _flat_keys(defaults)
    for key, value in flat.items():
        node, default_node = tree, defaults
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(default_node.get(part), Mapping):
                raise _unknown_key_error(key, known, source)
            node, default_node = node[part], default_node[part]
        if leaf not in default_node:
            raise _unknown_key_error(key, known, source)
        if isinstance(default_node[leaf], Mapping):
            raise UserError(f"config key '{key}' ({source}) is a section; set one of its keys")
        node[leaf] = _coerce(key, value, default_node[leaf], source)


def flatten_values(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"base_lr": 0.05}}`` -> ``{"optim.base_lr": 0.05}`` (also for Detectron2's CfgNode)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["optim.base_lr=0.1", ...]`` into a mapping; values stay strings until checked."""
    flat = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not of the form key=value")
        flat[key.strip()] = value
    return flat


def load_config(source: str | Path | None, defaults: Mapping, overrides: Iterable[str] = (), *,
                values: Mapping | None = None, values_source: str = "values") -> Config:
    """Defaults, then the YAML file (with its ``_BASE_`` chain), then ``values`` (an already parsed
    mapping, e.g. a section of another YAML file; errors name it ``values_source``), then ``key=value``
    overrides."""
    tree = copy.deepcopy(dict(defaults))
    if source is not None:
        path = resolve_config_path(source)
        _apply(tree, defaults, flatten_values(read_yaml(path)), str(path))
    if values:
        _apply(tree, defaults, flatten_values(values), values_source)
    _apply(tree, defaults, parse_overrides(overrides), "command line")
    return _to_config(tree)


def require_keys(cfg: Mapping, keys: Iterable[str]) -> None:
    """A one-line error for the first of ``keys`` left empty (each is set by the flag ``--KEY``)."""
    for key in keys:
        if not cfg[key]:
            raise UserError(f"{key} is empty: give --{key}")


def dump_config(cfg: Mapping) -> str:
    return yaml.safe_dump(cfg.to_dict() if isinstance(cfg, Config) else dict(cfg), sort_keys=False)


def save_config(cfg: Mapping, path: str | Path) -> None:
    """Write the fully resolved config (atomically)."""
    atomic_write_text(dump_config(cfg), path)


def describe_keys(defaults: Mapping) -> str:
    """One line per key with its default, for ``--help``."""
    return "\n".join(f"  {key} = {value!r}" for key, value in flatten_values(defaults).items())

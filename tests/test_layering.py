"""Imports point one way: commands -> suites -> protocols -> shared -> base.

Every module of ``simsiam_eval``, ``pretrain`` and ``transfer`` belongs to a layer (a new module
must be placed here); a module may import its own layer and the layers below. Protocols do not import
each other, except where ``PROTOCOL_USES`` says why.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("simsiam_eval", "pretrain", "transfer")

LAYERS = {  # layer -> module prefixes, lowest first
    "base": ("simsiam_eval.errors", "simsiam_eval.fault_points", "simsiam_eval.atomic", "simsiam_eval.safe_pickle", "simsiam_eval.provenance",
             "simsiam_eval.precision", "simsiam_eval.config", "simsiam_eval.configs", "simsiam_eval.distributed",
             "simsiam_eval.metrics_log", "simsiam_eval.mapped", "simsiam_eval.run_lock"),
    "shared": ("simsiam_eval.models", "simsiam_eval.data", "simsiam_eval.checkpoints", "simsiam_eval.results",
               "simsiam_eval.features"),
    "protocols": ("simsiam_eval.knn", "simsiam_eval.linear", "simsiam_eval.report", "pretrain", "transfer"),
    "suites": ("simsiam_eval.suite",),  # runs protocols over many checkpoints and data sets
    "commands": ("simsiam_eval.commands", "simsiam_eval.cli", "simsiam_eval.__main__"),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
PACKAGE_ROOT = "simsiam_eval"  # its __init__ holds only the version: base
PROTOCOL_USES = {("pretrain", "simsiam_eval.knn"): "pretraining reports kNN accuracy with the kNN protocol's monitor"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> tuple[str, str] | None:
    """(layer, unit) of a module of ours, the unit being its longest matching prefix; None if not ours."""
    if module == PACKAGE_ROOT:
        return "base", PACKAGE_ROOT
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return layer, prefix
    if module.split(".")[0] in PACKAGES:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}")
    return None


def imported_modules(source: str, module: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` statement names, at any depth (functions too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: relative import (line {node.lineno}); the code base imports absolutely"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that point up a layer or sideways between protocols."""
    layer, unit = unit_of(module)
    found = []
    for name in sorted(imports):
        try:
            target = unit_of(name)
        except AssertionError:
            continue  # ``from pkg import function``: the function is not a module
        if target is None:
            continue
        target_layer, target_unit = target
        if RANK[target_layer] > RANK[layer]:
            found.append(f"{module} ({layer}) imports {name} ({target_layer})")
        elif layer == target_layer == "protocols" and unit != target_unit and (unit, target_unit) not in PROTOCOL_USES:
            found.append(f"{module} (protocol {unit}) imports {name} (protocol {target_unit})")
    return found


def our_modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path


def test_every_import_points_down():
    found = []
    for module, path in our_modules():
        found += violations(module, imported_modules(path.read_text(), module))
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_an_upward_import_is_caught():
    """The check itself: the imports the layering forbids are reported, the allowed ones are not."""
    assert violations("simsiam_eval.checkpoints.canonical", {"pretrain.model"})
    assert violations("simsiam_eval.checkpoints.verify", {"transfer.verify"})
    assert violations("simsiam_eval.config", {"simsiam_eval.results.store"})
    assert violations("transfer.run", {"simsiam_eval.knn.vote"})
    assert violations("simsiam_eval.knn.evaluate", {"simsiam_eval.commands.knn"})
    assert not violations("pretrain.train", {"simsiam_eval.knn.monitor", "simsiam_eval.features"})
    assert not violations("simsiam_eval.commands.demo", {"pretrain.train", "transfer.run", "simsiam_eval.errors"})


def test_function_level_imports_count():
    source = "def f():\n    from transfer.backbone import build\n"
    assert "transfer.backbone" in imported_modules(source, "simsiam_eval.checkpoints.verify")

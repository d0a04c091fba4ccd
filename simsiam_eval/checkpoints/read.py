"""``read_checkpoint``: any supported file (or a ``random:`` spec) -> CanonicalCheckpoint."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from simsiam_eval.checkpoints.canonical import (
    BACKBONE_KEY,
    CanonicalCheckpoint,
    ResNetSpec,
    check_complete,
    infer_spec,
    random_checkpoint,
)
from simsiam_eval.checkpoints.files import load_file
from simsiam_eval.checkpoints.readers import FORMAT_NAMES, Format, detect_format, first_keys, get_format
from simsiam_eval.errors import UserError
from simsiam_eval.provenance import sha256_file


def read_checkpoint(source: str | os.PathLike, fmt: str = "auto", arch: str | None = None) -> CanonicalCheckpoint:
    """Read a checkpoint of any supported format into the canonical torchvision backbone.

    ``source`` is a file or ``random:ARCH[:STEM[:WIDTH]]``; ``fmt`` is ``auto`` or a name from
    ``FORMAT_NAMES``; ``arch``, when given, must match the architecture found in the file.
    """
    text = str(source)
    if text.startswith("random:") and not Path(text).exists():
        ckpt = random_checkpoint(text)
    else:
        obj = load_file(source)
        ckpt = canonicalize(obj, fmt, where=text)
        ckpt.path = text
        ckpt.sha256 = sha256_file(source)
    if arch is not None and arch != ckpt.arch:
        raise UserError(f"{text}: holds a {ckpt.arch} backbone, but {arch} was asked for")
    return ckpt


def canonicalize(obj: Any, fmt: str = "auto", where: str = "checkpoint") -> CanonicalCheckpoint:
    """The canonical backbone of an already loaded checkpoint object."""
    chosen = _choose_format(obj, fmt, where)
    try:
        tensors, rename = chosen.read(obj)
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{where}: not in the {chosen.name} layout (missing {exc})") from None
    state, found, dropped = split_backbone(tensors, rename, where)
    if not state:
        raise UserError(f"{where}: no ResNet backbone tensors found in the {chosen.name} layout "
                        f"(first keys: {', '.join(first_keys(obj))}); formats tried: {chosen.name}")
    check_finite(state, where)
    spec = infer_spec(state, where)
    if spec.stem == "cifar":
        spec = ResNetSpec(spec.arch, chosen.cifar_stem, spec.width)
    filled = check_complete(state, spec, where)
    return CanonicalCheckpoint(state, spec.arch, spec.stem, spec.width, source_format=chosen.name,
                               found=found, dropped=dropped, dropped_groups=group_keys(dropped, rename),
                               filled=filled, metadata=_metadata(obj))


def check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse a backbone holding NaN or Inf, naming the first such tensor (a diverged run, a damaged file)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{where}: tensor {name} holds {bad} NaN/Inf value(s) of {tensor.numel()} (a diverged "
                            "run or a damaged file); refusing to use it")


def _choose_format(obj: Any, fmt: str, where: str) -> Format:
    if fmt != "auto":
        try:
            return get_format(fmt)
        except KeyError:
            raise UserError(f"unknown checkpoint format '{fmt}' (choose from auto, {', '.join(FORMAT_NAMES)})") from None
    chosen = detect_format(obj)
    if chosen is None:
        raise UserError(f"{where}: no backbone keys found (first keys: {', '.join(first_keys(obj))}); "
                        f"formats tried: {', '.join(FORMAT_NAMES)}")
    return chosen


def split_backbone(tensors: Mapping[str, torch.Tensor], rename, where: str):
    """(backbone state dict in torchvision names, source keys found, source keys dropped)."""
    state: dict[str, torch.Tensor] = {}
    found, dropped = [], []
    for key, value in tensors.items():
        name = rename(key)
        if name is None or not BACKBONE_KEY.match(name):
            dropped.append(key)
            continue
        if name in state:
            raise UserError(f"{where}: two tensors map to backbone key {name} (second: {key})")
        state[name] = value
        found.append(key)
    return state, found, dropped


_WRAPPERS = {"module", "teacher", "student", "trunk", "heads", "state_dict_ema", "model"}


def group_keys(keys: list[str], rename) -> dict[str, int]:
    """Count dropped keys per part of the source model: ``module.encoder.fc.*``, ``module.predictor.*``, ``queue``."""
    groups: dict[str, int] = {}
    for key in keys:
        name = rename(key)
        if name is not None and name != key[len(key) - len(name):]:
            name = None
        if name is not None:  # a non-backbone part inside the backbone's namespace, e.g. the projector in fc
            group = key[:len(key) - len(name)] + name.split(".")[0]
        else:
            parts = key.split(".")
            depth = 0
            while depth < len(parts) - 1 and parts[depth] in _WRAPPERS:
                depth += 1
            group = ".".join(parts[:depth + 1])
        group += ".*" if group != key else ""
        groups[group] = groups.get(group, 0) + 1
    return groups


def _metadata(obj: Any) -> dict[str, Any]:
    """Small scalar facts worth keeping (epoch, arch string of the source...)."""
    if not isinstance(obj, Mapping):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (int, float, str, bool))}

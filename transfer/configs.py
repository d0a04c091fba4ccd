"""The detection recipes (``configs/detectron2``) and a Detectron2-free reader of their ``_BASE_`` chains.

Detectron2 reads these files itself (``get_cfg().merge_from_file``); the reader here serves the parts
that run without Detectron2 (the tests of the recipes' values).
"""
from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsiam_eval.config import packaged_config_dir, read_yaml
from simsiam_eval.errors import UserError


@dataclass(frozen=True)
class Task:
    """A named recipe: its config file (under configs/detectron2) and the data name records carry."""

    config: str
    data_name: str
    summary: str


TASKS: dict[str, Task] = {
    "voc07": Task("pascal_voc07_R_50_C4.yaml", "voc07",
                  "Faster R-CNN R50-C4, VOC07 trainval -> VOC07 test, 12.5k iterations"),
    "voc0712": Task("pascal_voc0712_R_50_C4.yaml", "voc0712",
                    "Faster R-CNN R50-C4, VOC07+12 trainval -> VOC07 test, 24k iterations"),
    "coco_1x": Task("coco_R_50_C4_1x.yaml", "coco",
                    "Mask R-CNN R50-C4, COCO train2017 -> val2017, 90k iterations"),
    "coco_2x": Task("coco_R_50_C4_2x.yaml", "coco_2x",
                    "Mask R-CNN R50-C4, COCO train2017 -> val2017, 180k iterations"),
}


def config_dir() -> Path:
    """The folder of the Detectron2 recipes."""
    return packaged_config_dir() / "detectron2"


def task_config(task: str) -> Path:
    """The config file of a task name, or ``task`` itself as a YAML path (absolute, relative to the
    current folder, or relative to configs/detectron2, e.g. ``smoke/faster_rcnn_shapes_voc.yaml``)."""
    if task in TASKS:
        return config_dir() / TASKS[task].config
    for candidate in (Path(task).expanduser(), config_dir() / task):
        if candidate.is_file() and candidate.suffix in (".yaml", ".yml"):
            return candidate.resolve()
    raise UserError(f"unknown task '{task}': choose {', '.join(TASKS)} or give a Detectron2 YAML config file")


def task_data_name(task: str) -> str:
    """Short dataset name for records: the recipe's (voc07, voc0712, coco) or the config file's stem."""
    return TASKS[task].data_name if task in TASKS else Path(task).stem


def _decode(value: Any) -> Any:
    """A YAML value as yacs decodes it: strings that are Python literals become those literals."""
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def read_config_tree(path: str | os.PathLike) -> dict:
    """A Detectron2 YAML file merged over its ``_BASE_`` chain (the project's YAML reader, which
    resolves a base relative to the file first, as Detectron2 does), values decoded as yacs does.
    Keys absent here keep Detectron2's defaults, which this reader does not know."""
    return _decode(read_yaml(Path(path).expanduser().resolve()))


def config_value(tree: Mapping, key: str, default: Any = None) -> Any:
    """``tree['A']['B']`` for ``key='A.B'``; ``default`` when a part is absent."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node

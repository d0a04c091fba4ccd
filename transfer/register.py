"""Register the data sets a config names with Detectron2's DatasetCatalog / MetadataCatalog.

Standard names (voc_2007_test, coco_2017_train, ...) are Detectron2's own registrations under
$DETECTRON2_DATASETS; ``voc:`` and ``coco:`` specs (``transfer.datasets``) are registered here under
the spec itself, so a config can name any folder or json directly. Registration is per process:
every Detectron2 worker calls ``register_datasets`` before building its data loaders.
"""
from __future__ import annotations

from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from simsiam_eval.errors import UserError
from transfer.datasets import (
    DatasetSource,
    coco_categories,
    load_dataset,
    parse_dataset_name,
    read_coco_json,
    voc_class_names,
)


def _load(source: DatasetSource, class_names: list[str]) -> list[dict]:
    dicts = load_dataset(source, class_names)
    for record in dicts:
        for obj in record["annotations"]:
            obj["bbox_mode"] = BoxMode(obj["bbox_mode"])
    return dicts


_REGISTERED: dict[str, DatasetSource] = {}  # what this process registered, by name


def register_dataset(name: str) -> None:
    """Make ``name`` known to Detectron2: a no-op for its own names and for ours that still point at the
    same files; a ``voc:``/``coco:`` name registered here earlier under another data root is replaced."""
    source = parse_dataset_name(name)
    if name in DatasetCatalog.list():
        if _REGISTERED.get(name, source) == source:
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if source is None:
        raise UserError(f"unknown dataset '{name}': use a standard name (voc_2007_trainval, coco_2017_train, ...), "
                        f"voc:FOLDER@SPLIT or coco:FILE.json[@IMAGE_ROOT]")
    if source.kind == "voc":
        classes = voc_class_names(source.path)
        metadata = {"dirname": str(source.path), "split": source.split, "year": source.year,
                    "evaluator_type": "pascal_voc_folder"}
    else:
        if source.image_root is None:
            raise UserError(f"dataset {name}: no image folder found next to {source.path}; "
                            f"give coco:FILE.json@IMAGE_ROOT")
        classes, id_map = coco_categories(read_coco_json(source.path))
        metadata = {"json_file": str(source.path), "image_root": str(source.image_root),
                    "thing_dataset_id_to_contiguous_id": id_map, "evaluator_type": "coco"}
    DatasetCatalog.register(name, partial(_load, source, classes))
    MetadataCatalog.get(name).set(thing_classes=list(classes), **metadata)
    _REGISTERED[name] = source


def register_datasets(cfg) -> list[str]:
    """Register every data set of ``DATASETS.TRAIN`` and ``DATASETS.TEST``; return their names."""
    names = list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    for name in names:
        register_dataset(name)
    return names


def class_names(name: str) -> list[str]:
    """The registered class names of a data set."""
    names = MetadataCatalog.get(name).get("thing_classes", None)
    if names is None:
        raise UserError(f"dataset {name}: Detectron2 has no class names for it (metadata thing_classes)")
    return list(names)

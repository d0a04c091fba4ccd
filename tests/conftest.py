"""Shared fixtures: small data sets generated once per test session."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from simsiam_eval.data.shapes import CLASSES, ShapesSettings, write_shapes_dataset

TINY_SHAPES = ShapesSettings(train_per_class=12, val_per_class=4, image_size=32,
                             detection_train=6, detection_val=3, detection_size=96)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A tiny shapes data set (ImageFolder train/val + VOC + COCO), 72 training images."""
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", TINY_SHAPES)


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("detectron2") is None:
        skip = pytest.mark.skip(reason="detectron2 is not installed (see ../shared/DETECTRON2.md or the README)")
        for item in items:
            if item.get_closest_marker("detectron2") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """Shapes detection data (8 train / 3 val scenes of 96 px) under DATA/shapes, VOC and COCO layouts
    (Detectron2 tests: ``--data-root DATA``)."""
    root = tmp_path_factory.mktemp("d2data")
    settings = ShapesSettings(train_per_class=1, val_per_class=1, image_size=16,
                              detection_train=8, detection_val=3, detection_size=96)
    write_shapes_dataset(root / "shapes", settings)
    # so few scenes may lack a class: the VOC folder declares its classes (transfer/datasets.py)
    (root / "shapes" / "voc" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root

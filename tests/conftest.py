"""Shared fixtures: small data sets generated once per test session."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from simsiam_eval.data.shapes import ShapesSettings, write_shapes_dataset

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

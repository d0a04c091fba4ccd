"""Shared fixtures: small data sets generated once per test session."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

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


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The 1,797 8x8 digits at 28 px (the study preset's size): 1,500 to train, 297 to test."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    images = np.stack([np.asarray(Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                       for image in digits.images])
    for prefix, part in (("train", slice(0, 1500)), ("t10k", slice(1500, None))):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[part])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", digits.target[part])
    return root

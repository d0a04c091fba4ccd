"""Checks run before any long job; each failure is a one-line UserError saying what to do.

1. Detectron2 importable (else: how to install it).
2. Every data set present: the missing folders and files listed; for ``voc:``/``coco:`` data sets
   every image file too.
3. The converted weights fill every backbone tensor of the detector (``transfer.weights``).
4. MODEL.ROI_HEADS.NUM_CLASSES equal to the number of classes of the training data, and train and
   test sets with the same classes in the same order.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from typing import Callable

from simsiam_eval.errors import UserError
from transfer.datasets import (
    check_present,
    load_dataset,
    missing_images,
    parse_dataset_name,
)

INSTALL_DETECTRON2 = ("install it from the official repository, after torch, e.g. "
                      "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
                      "(see the README, section Detection transfer)")


def require_detectron2() -> None:
    """Detectron2 importable, with its compiled extension (``detectron2._C``)."""
    if importlib.util.find_spec("detectron2") is None:
        raise UserError(f"detectron2 is not installed: {INSTALL_DETECTRON2}")
    try:
        importlib.import_module("detectron2._C")
    except ImportError as exc:
        raise UserError(f"detectron2 is installed but does not load ({str(exc).splitlines()[0]}); "
                        f"rebuild it against this torch: {INSTALL_DETECTRON2}") from None


def check_datasets(names: Sequence[str], known: Callable[[str], bool] = lambda name: False) -> None:
    """Every named data set on disk; ``known(name)`` says whether Detectron2 has a registration for a
    name that is neither standard nor a spec."""
    for name in dict.fromkeys(names):
        source = parse_dataset_name(name)
        if source is None:
            if not known(name):
                raise UserError(f"unknown dataset '{name}': use a standard name (voc_2007_trainval, coco_2017_train, "
                                f"...), voc:FOLDER@SPLIT or coco:FILE.json[@IMAGE_ROOT]")
            continue
        check_present(source)
        if not source.builtin:
            dicts = load_dataset(source)
            if not dicts:
                raise UserError(f"dataset {name}: no images listed")
            count, first = missing_images(dicts)
            if count:
                raise UserError(f"dataset {name}: {count} of {len(dicts)} image files missing "
                                f"(first: {', '.join(first)})")


def check_classes(num_classes: int, train: Mapping[str, Sequence[str]], test: Mapping[str, Sequence[str]]) -> None:
    """NUM_CLASSES matches the training data, and every data set has the same class list."""
    reference_name, reference = next(iter(train.items()))
    for name, classes in {**train, **test}.items():
        if list(classes) != list(reference):
            raise UserError(f"datasets {reference_name} and {name} have different classes "
                            f"({len(reference)}: {', '.join(reference[:4])}, ... vs {len(classes)}: "
                            f"{', '.join(classes[:4])}, ...); train and test must share one class list")
    if num_classes != len(reference):
        raise UserError(f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes} but {reference_name} has {len(reference)} "
                        f"classes; add MODEL.ROI_HEADS.NUM_CLASSES {len(reference)}")

"""CIFAR-10/100 in the official "python version" pickle batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simsiam_eval.data.arrays import ArrayImageDataset
from simsiam_eval.errors import UNREADABLE_FILE_ERRORS, UserError
from simsiam_eval.safe_pickle import RefusedPickle, safe_load

IMAGE_SIZE = 32  # every CIFAR image is 32 x 32
_LAYOUT = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "names": "label_names", "labels": "labels"},
    "cifar100": {"train": ["train"], "test": ["test"],
                 "meta": "meta", "names": "fine_label_names", "labels": "fine_labels"},
}


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing CIFAR batch file")
    try:
        with open(path, "rb") as f:
            batch = safe_load(f, encoding="latin1")
    except RefusedPickle as exc:
        raise UserError(f"{path}: refused to load a CIFAR batch that carries code: {exc}") from None
    except UNREADABLE_FILE_ERRORS as exc:  # a corrupt or foreign file
        raise UserError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR batch (expected a dict)")
    return batch


def load_cifar(root: Path, kind: str, split: str, transform=None) -> ArrayImageDataset:
    """Load ``cifar-10-batches-py`` or ``cifar-100-python`` (the folder itself or its parent)."""
    layout = _LAYOUT[kind]
    if split not in ("train", "test"):
        raise UserError(f"{root}: unknown split '{split}' (use train or test)")
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder does not exist")
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if not (root / layout["meta"]).exists() and (root / sub / layout["meta"]).exists():
            root = root / sub
    classes = [str(name) for name in _unpickle(root / layout["meta"])[layout["names"]]]
    images, labels = [], []
    for name in layout[split]:
        batch = _unpickle(root / name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
            images.append(data.transpose(0, 2, 3, 1))
            labels.extend(int(x) for x in batch[layout["labels"]])
        except (KeyError, ValueError) as exc:
            raise UserError(f"{root / name}: malformed CIFAR batch ({exc})") from None
    return ArrayImageDataset(np.concatenate(images), labels, classes, transform, root=str(root))

"""One dataset-spec string for every command.

    PATH                      an ImageFolder directory (ImageNet layout: PATH/<class>/<image>)
    imagefolder:PATH          the same, explicitly
    cifar10:DIR[@train|test]  the official CIFAR-10 python batches (cifar-10-batches-py)
    cifar100:DIR[@train|test] the official CIFAR-100 python batches (cifar-100-python)
    mnist:DIR[@train|test]    MNIST IDX files, gzipped or not
    fashion-mnist:DIR[@...]   Fashion-MNIST IDX files (Debian: /usr/share/datasets/fashion-mnist)
    shapes:DIR[@train|val]    the synthetic shapes data set; generated into DIR if absent
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from simsiam_eval.data.cifar import IMAGE_SIZE as CIFAR_IMAGE_SIZE
from simsiam_eval.data.cifar import load_cifar
from simsiam_eval.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, idx_image_size, load_idx_dataset
from simsiam_eval.data.imagefolder import load_image_folder
from simsiam_eval.errors import UserError

KINDS = ("imagefolder", "cifar10", "cifar100", "mnist", "fashion-mnist", "shapes")
DEFAULT_SPLIT = {"cifar10": "train", "cifar100": "train", "mnist": "train",
                 "fashion-mnist": "train", "shapes": "train", "imagefolder": ""}


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    path: Path
    split: str

    def __str__(self) -> str:
        if self.kind == "imagefolder":
            return str(self.path)
        return f"{self.kind}:{self.path}@{self.split}"


def parse_spec(spec: str) -> DatasetSpec:
    """Parse ``kind:PATH[@split]`` (or a bare ImageFolder path)."""
    if not spec:
        raise UserError("empty dataset spec (give a folder or kind:PATH, e.g. cifar10:DIR@test)")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS or len(kind) == 1:  # 'C:\\' is a Windows path, not a kind
        return DatasetSpec("imagefolder", Path(spec).expanduser(), "")
    path, _, split = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not path:
        raise UserError(f"dataset spec '{spec}' has no path after '{kind}:'")
    if kind == "imagefolder" and split:
        raise UserError(f"dataset spec '{spec}': ImageFolder takes no @split; point at the split's folder")
    return DatasetSpec(kind, Path(path).expanduser(), split or DEFAULT_SPLIT[kind])


def prepare_dataset(spec: str | DatasetSpec) -> DatasetSpec:
    """Create what can be created locally (the shapes data set); call once, before open_dataset."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "shapes":
        from simsiam_eval.data.shapes import ensure_shapes_dataset

        ensure_shapes_dataset(parsed.path)
    return parsed


def open_dataset(spec: str | DatasetSpec, transform: Callable | None = None) -> Dataset:
    """Open a labelled image dataset; items are ``(transform(PIL RGB image), class index)``.

    Every returned dataset has ``classes`` (names) and ``targets`` (one int per item).
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "imagefolder":
        return load_image_folder(parsed.path, transform)
    if parsed.kind in ("cifar10", "cifar100"):
        return load_cifar(parsed.path, parsed.kind, parsed.split, transform)
    if parsed.kind in ("mnist", "fashion-mnist"):
        classes = MNIST_CLASSES if parsed.kind == "mnist" else FASHION_MNIST_CLASSES
        return load_idx_dataset(parsed.path, parsed.split, classes, transform)
    if parsed.split not in ("train", "val"):
        raise UserError(f"{parsed.path}: unknown shapes split '{parsed.split}' (use train or val)")
    prepare_dataset(parsed)
    return load_image_folder(parsed.path / parsed.split, transform)


def native_image_size(spec: str | DatasetSpec) -> int | None:
    """The side of the square images of an array-backed or generated data set (CIFAR 32, MNIST-family
    from the IDX header, shapes as generated); None for a folder, whose images may have any size."""
    parsed = prepare_dataset(spec)
    if parsed.kind in ("cifar10", "cifar100"):
        return CIFAR_IMAGE_SIZE
    if parsed.kind in ("mnist", "fashion-mnist"):
        if not parsed.path.is_dir():
            raise UserError(f"{parsed.path}: dataset folder does not exist")
        return idx_image_size(parsed.path, parsed.split)
    if parsed.kind == "shapes":
        from simsiam_eval.data.shapes import shapes_image_size

        return shapes_image_size(parsed.path)
    return None

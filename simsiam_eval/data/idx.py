"""MNIST-family IDX files (``train-images-idx3-ubyte[.gz]``), gzipped or not."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from simsiam_eval.data.arrays import ArrayImageDataset
from simsiam_eval.errors import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file into an array; errors name the file."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(f"{path}: truncated or corrupt IDX file "
                        f"(header says {shape}, {len(data) - header} bytes of data)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{root}: missing {stem}[.gz]")


def idx_image_size(root: Path, split: str) -> int | None:
    """The side of the split's images from the IDX header alone (28 for MNIST); None if not square."""
    if split not in _PREFIX:
        raise UserError(f"{root}: unknown split '{split}' (use train or test)")
    path = _find(root, f"{_PREFIX[split]}-images-idx3-ubyte")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            header = f.read(16)
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file ({exc})") from None
    if len(header) < 16 or header[:2] != b"\0\0" or header[3] != 3:
        raise UserError(f"{path}: not an IDX image file (bad magic number)")
    rows, cols = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
    return rows if rows == cols else None


def load_idx_dataset(root: Path, split: str, classes: list[str], transform=None) -> ArrayImageDataset:
    """The MNIST layout: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in one folder."""
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder does not exist")
    if split not in _PREFIX:
        raise UserError(f"{root}: unknown split '{split}' (use train or test)")
    prefix = _PREFIX[split]
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return ArrayImageDataset(images, labels.tolist(), classes, transform, root=str(root))

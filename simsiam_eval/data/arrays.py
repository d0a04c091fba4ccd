"""A labelled dataset held in memory as a uint8 array (MNIST, CIFAR)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class ArrayImageDataset(Dataset):
    """Images as a (N, H, W) or (N, H, W, 3) uint8 array; always yields RGB PIL images."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None, root: str = "") -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform
        self.root = root

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

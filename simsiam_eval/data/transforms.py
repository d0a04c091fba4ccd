"""Transforms of the published protocols (MoCo v2 / SimSiam augmentation, main_lincls eval)."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import ImageFilter
from torchvision import transforms as T

from simsiam_eval.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR,  # main_lincls (torchvision's default)
                  "bicubic": T.InterpolationMode.BICUBIC}    # DINO eval_knn: Resize(256, interpolation=3)


class PILGaussianBlur:
    """Blur with PIL's GaussianBlur, radius ~ U(sigma): the official SimSiam/MoCo v2 augmentation."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image):
        radius = torch.empty(1).uniform_(*self.sigma).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(sigma={self.sigma})"


def normalize() -> T.Normalize:
    return T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)


def normalization_settings() -> dict[str, list[float]]:
    """The mean and std every transform here normalises with, as records state them."""
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def simsiam_augmentation(image_size: int = 224, min_scale: float = 0.2, blur: bool = True) -> T.Compose:
    """MoCo v2 augmentation as in SimSiam's main_simsiam.py (blur off for the CIFAR variant)."""
    steps = [
        T.RandomResizedCrop(image_size, scale=(min_scale, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur:
        steps.append(T.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5))
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), normalize()]
    return T.Compose(steps)


class MultiViewTransform:
    """``count`` independent views of one image (2 for SimSiam; 4 for two pairs per image)."""

    def __init__(self, base: Callable, count: int = 2) -> None:
        self.base = base
        self.count = count

    def __call__(self, image):
        return [self.base(image) for _ in range(self.count)]

    def __repr__(self) -> str:
        return f"MultiViewTransform({self.base!r}, count={self.count})"


def linear_train_transform(image_size: int = 224) -> T.Compose:
    """main_lincls.py training: RandomResizedCrop + flip."""
    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize()])


def eval_transform(image_size: int = 224, resize: int | None = None, interpolation: str = "bilinear",
                   native: bool = False) -> T.Compose:
    """main_lincls.py validation: Resize(256) + CenterCrop(224), scaled to other sizes by 256/224.

    ``native``: the data set's images are all ``image_size`` square and are used as they are
    (ToTensor + Normalize, as MoCo's CIFAR kNN demo), unless an explicit ``resize`` is given.
    ``interpolation`` is bilinear (main_lincls) or bicubic (DINO eval_knn).
    """
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation '{interpolation}' (choose from {', '.join(INTERPOLATIONS)})")
    if native and resize is None:
        return T.Compose([T.ToTensor(), normalize()])
    resize = resize if resize is not None else int(round(image_size * 256 / 224))
    return T.Compose([T.Resize(resize, interpolation=INTERPOLATIONS[interpolation]), T.CenterCrop(image_size),
                      T.ToTensor(), normalize()])

"""The evaluation transform: native-size images as they are, others Resize + CenterCrop (bicubic for DINO).

Oracles are torchvision pipelines written out here from the published recipes: MoCo's CIFAR kNN demo
(ToTensor + Normalize, nothing else), main_lincls (Resize(256) + CenterCrop(224)) and DINO's
eval_knn (Resize(256, interpolation=3) + CenterCrop(224)).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from simsiam_eval.data import open_dataset
from simsiam_eval.data.sizes import is_native
from simsiam_eval.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from test_data import write_cifar10, write_idx

NORMALIZE = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def test_cifar_images_at_32_px_are_their_pixels_normalised(tmp_path):
    raw = write_cifar10(tmp_path / "cifar-10-batches-py")  # (20, 3072) uint8, the training batches
    assert is_native(32, f"cifar10:{tmp_path}") and not is_native(24, f"cifar10:{tmp_path}")
    dataset = open_dataset(f"cifar10:{tmp_path}", eval_transform(32, native=True))
    for index in (0, 7, 19):
        pixels = raw[index].reshape(3, 32, 32).transpose(1, 2, 0)  # HWC uint8, as the batches store it
        expected = NORMALIZE(T.ToTensor()(pixels))
        assert torch.equal(dataset[index][0], expected), index


def test_mnist_images_at_28_px_are_their_pixels_normalised(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (5, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), gz=False)
    assert is_native(28, f"mnist:{tmp_path}@test")
    dataset = open_dataset(f"mnist:{tmp_path}@test", eval_transform(28, native=True))
    grey = T.ToTensor()(images[2].astype(np.uint8))  # (1, 28, 28): the RGB copy repeats it
    assert torch.equal(dataset[2][0], NORMALIZE(grey.expand(3, -1, -1)))


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size,image_size", [(32, (40, 40)), (32, (32, 48)), (224, (500, 375)), (28, (32, 32))])
def test_other_sizes_keep_resize_and_centre_crop(size, image_size):
    image = photo(*image_size)
    resize = int(round(size * 256 / 224))
    expected = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), NORMALIZE])(image)
    assert torch.equal(eval_transform(size)(image), expected)


def test_a_folder_image_of_exactly_the_evaluation_size_still_gets_main_lincls_resize_and_crop(tmp_path):
    # main_lincls resizes every ImageNet image to 256 and crops 224, whatever its size: the native
    # rule is decided per data set (array-backed and generated sets), never per image
    (tmp_path / "a").mkdir()
    image = photo(224, 224, seed=2)
    image.save(tmp_path / "a" / "0.png")
    assert not is_native(224, str(tmp_path))
    expected = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), NORMALIZE])(image)
    assert torch.equal(eval_transform(224)(image), expected)
    assert not torch.equal(expected, NORMALIZE(T.ToTensor()(image)))


def test_dino_interpolation_is_bicubic_as_eval_knn():
    image = photo(500, 375, seed=1)
    dino = T.Compose([T.Resize(256, interpolation=3), T.CenterCrop(224), T.ToTensor(), NORMALIZE])(image)
    bilinear = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), NORMALIZE])(image)
    assert torch.equal(eval_transform(224, interpolation="bicubic")(image), dino)
    assert not torch.equal(dino, bilinear)

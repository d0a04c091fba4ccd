"""The evaluation size: the data's native size by default, an explicit size wins, upsampling is announced."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simsiam_eval.config import load_config
from simsiam_eval.data.shapes import ShapesSettings, write_shapes_dataset
from simsiam_eval.data.sizes import evaluation_size
from simsiam_eval.data.specs import native_image_size
from simsiam_eval.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from simsiam_eval.distributed import DistInfo
from simsiam_eval.knn.defaults import KNN_DEFAULTS
from simsiam_eval.knn.evaluate import run_knn
from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
from simsiam_eval.linear.evaluate import run_linear
from test_data import FASHION, write_cifar10, write_idx

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY_BACKBONE = "random:resnet18:cifar:8"


@pytest.fixture()
def cifar(tmp_path) -> str:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    return f"cifar10:{tmp_path / 'cifar-10-batches-py'}"


def test_native_sizes_of_the_small_image_specs(tmp_path, cifar):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), gz=True)
    shapes = write_shapes_dataset(tmp_path / "shapes", ShapesSettings(2, 1, image_size=40, detection_train=0,
                                                                      detection_val=0), detection=False)
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    Image.new("RGB", (500, 300)).save(tmp_path / "folder" / "cat" / "a.png")
    assert native_image_size(f"{cifar}@test") == 32
    assert native_image_size(f"mnist:{tmp_path / 'mnist'}") == 28
    assert native_image_size(f"shapes:{shapes}@val") == 40
    assert native_image_size(str(tmp_path / "folder")) is None
    assert [evaluation_size(0, s) for s in (cifar, f"mnist:{tmp_path / 'mnist'}", f"shapes:{shapes}@train",
                                            str(tmp_path / "folder"))] == [32, 28, 40, 224]
    assert evaluation_size(64, cifar) == 64  # an explicit size wins
    if FASHION.is_dir():
        assert evaluation_size(0, f"fashion-mnist:{FASHION}@test") == 28


def knn_config(data: str, tmp_path: Path, *extra: str):
    overrides = [f"checkpoint={TINY_BACKBONE}", f"train={data}@train", f"val={data}@test", "k=[5]", "workers=0",
                 "progress=false", f"cache_dir={tmp_path / 'cache'}", *extra]
    return load_config(None, KNN_DEFAULTS, overrides)


def test_knn_evaluates_cifar_at_32_px_by_default_and_records_the_normalisation(cifar, tmp_path, capsys):
    assert KNN_DEFAULTS["image_size"] == 0 and LINEAR_DEFAULTS["image_size"] == 0
    record = run_knn(knn_config(cifar, tmp_path), CPU)
    settings = record["settings"]
    assert settings["image_size"] == 32
    assert "Resize" not in settings["transform"] and "CenterCrop" not in settings["transform"]  # as they are
    assert settings["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert "upsampl" not in capsys.readouterr().out


def test_knn_says_so_when_it_upsamples_more_than_twice(cifar, tmp_path, capsys):
    record = run_knn(knn_config(cifar, tmp_path, "image_size=96", "interpolation=bicubic"), CPU)
    assert "interpolation=bicubic" in record["settings"]["transform"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "upsampl" in line]
    assert len(lines) == 1 and "32" in lines[0] and "96" in lines[0] and "3.0x" in lines[0], lines
    run_knn(knn_config(cifar, tmp_path, "image_size=64"), CPU)  # exactly 2x: no message
    assert "upsampl" not in capsys.readouterr().out


def test_linear_evaluates_cifar_at_32_px_by_default(cifar, tmp_path, capsys):
    overrides = [f"checkpoint={TINY_BACKBONE}", f"train={cifar}@train", f"val={cifar}@test", "mode=cached",
                 "epochs=1", "optimizer=sgd", "batch_size=8", "workers=0", "progress=false", "tensorboard=false",
                 f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}"]
    record = run_linear(load_config(None, LINEAR_DEFAULTS, overrides), CPU)
    assert record["settings"]["image_size"] == 32
    assert "Resize" not in record["settings"]["transforms"]["val"]
    assert record["settings"]["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    upsampled = run_linear(load_config(None, LINEAR_DEFAULTS, [*overrides, "image_size=72",
                                                               f"output_dir={tmp_path / 'run72'}"]), CPU)
    assert upsampled["settings"]["image_size"] == 72
    assert sum("upsampl" in line for line in capsys.readouterr().out.splitlines()) == 1

import gzip
import json
import pickle
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from simsiam_eval.data import open_dataset, parse_spec
from simsiam_eval.data.shapes import CLASSES, ShapesSettings, write_shapes_dataset
from simsiam_eval.data.transforms import eval_transform, linear_train_transform
from simsiam_eval.errors import UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz)
    dataset = open_dataset(f"mnist:{tmp_path}@test")
    assert len(dataset) == 7 and dataset.targets == labels.tolist() and len(dataset.classes) == 10
    image, label = dataset[3]
    assert image.mode == "RGB" and label == labels[3]
    assert np.array_equal(np.asarray(image)[..., 0], images[3])


def test_truncated_idx_and_missing_files_name_the_path(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), gz=False)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte"):
        open_dataset(f"fashion-mnist:{tmp_path}")
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-10])
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), gz=False)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: truncated or corrupt IDX file"):
        open_dataset(f"fashion-mnist:{tmp_path}")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian():
    dataset = open_dataset(f"fashion-mnist:{FASHION}@test")
    assert len(dataset) == 10000 and dataset.classes[9] == "Ankle boot"
    assert np.bincount(dataset.targets).tolist() == [1000] * 10
    assert dataset[0][0].size == (28, 28)


def write_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    pickle.dump({"label_names": names, "num_vis": 3072}, open(root / "batches.meta", "wb"))
    all_data = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        all_data.append(data)
        pickle.dump({"data": data, "labels": rng.integers(0, 10, per_batch).tolist(),
                     "batch_label": name}, open(root / name, "wb"))
    return np.concatenate(all_data[:5])


def test_cifar10_batches(tmp_path):
    data = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = open_dataset(f"cifar10:{tmp_path}")  # the parent folder works too
    test = open_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}@test")
    assert (len(train), len(test), train.classes[0]) == (20, 4, "airplane")
    image = np.asarray(train[5][0])
    assert np.array_equal(image, data[5].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar_pickle_carrying_code_is_refused(tmp_path):
    write_cifar10(tmp_path / "c")

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(UserError, match=r"test_batch: refused to load a CIFAR batch that carries code: refusing to load builtins.print"):
        open_dataset(f"cifar10:{tmp_path / 'c'}@test")


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty.*no images found"):
        open_dataset(str(tmp_path / "empty"))
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    dataset = open_dataset(str(tmp_path / "bad"))
    with pytest.raises(UserError, match=r"broken.png: corrupt or unreadable image"):
        dataset[0]


def test_spec_parsing():
    assert parse_spec("cifar10:/d@test").split == "test"
    assert parse_spec("mnist:/d").split == "train"
    assert parse_spec("/data/imagenet/train").kind == "imagefolder"
    assert str(parse_spec("shapes:/x@val")) == "shapes:/x@val"
    with pytest.raises(UserError, match="no path"):
        parse_spec("cifar10:")


def test_shapes_is_deterministic_and_consistent(tmp_path):
    settings = ShapesSettings(train_per_class=2, val_per_class=1, image_size=32, detection_train=3,
                              detection_val=2, detection_size=64)
    a = write_shapes_dataset(tmp_path / "a", settings)
    b = write_shapes_dataset(tmp_path / "b", settings)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    train = open_dataset(f"shapes:{a}@train")
    assert train.classes == sorted(CLASSES) and len(train) == 2 * len(CLASSES)
    coco = json.loads((a / "coco/annotations/instances_train.json").read_text())
    assert len(coco["images"]) == 3 and {c["name"] for c in coco["categories"]} == set(CLASSES)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and 0 < ann["area"] <= w * h
    assert (a / "voc/classes.txt").read_text().split() == list(CLASSES)
    voc_ids = (a / "voc/ImageSets/Main/train.txt").read_text().split()
    objects = ET.parse(a / "voc/Annotations" / f"{voc_ids[0]}.xml").findall("object")
    first_image = [ann for ann in coco["annotations"] if ann["image_id"] == 1]
    assert len(objects) == len(first_image) > 0
    instance_ids = np.unique(np.asarray(Image.open(a / "voc/SegmentationObject" / f"{voc_ids[0]}.png")))
    assert instance_ids.tolist() == list(range(len(objects) + 1))


def test_shapes_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a shapes data set"):
        open_dataset(f"shapes:{tmp_path / 'mine'}")


def test_linear_transforms_are_main_lincls():
    """main_lincls.py: train RandomResizedCrop(224) + RandomHorizontalFlip, val Resize(256) + CenterCrop(224),
    then ToTensor and ImageNet Normalize; the same tensors for the same image and RNG seed."""
    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    official = {"train": T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
                "val": T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])}
    ours = {"train": linear_train_transform(224), "val": eval_transform(224)}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    for split in ("train", "val"):
        for seed in range(4):
            torch.manual_seed(seed)
            expected = official[split](image)
            torch.manual_seed(seed)
            assert torch.equal(ours[split](image), expected), (split, seed)

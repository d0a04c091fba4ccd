"""Low-shot linear probes: balanced per-class subsets, subset files, training on exactly the subset in
both modes, the record's subset fields, and low-shot columns (mean ± std over subset seeds) in tables."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import simsiam_eval.linear.trainer as linear_trainer
from simsiam_eval import cli
from simsiam_eval.config import load_config
from simsiam_eval.data.arrays import ArrayImageDataset
from simsiam_eval.data.specs import open_dataset
from simsiam_eval.data.subsets import balanced_subset, subset_from_file, subset_hash
from simsiam_eval.distributed import DistInfo
from simsiam_eval.errors import UserError
from simsiam_eval.linear.defaults import LINEAR_DEFAULTS
from simsiam_eval.linear.evaluate import check_linear_config, run_linear
from simsiam_eval.report.build import comparison_tables
from simsiam_eval.report.measurements import measurements
from simsiam_eval.report.tables import table4
from simsiam_eval.results.records import build_record

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_balanced_subset_takes_the_rounded_fraction_of_every_class():
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2, 3], [100, 50, 10, 25]))
    subset = balanced_subset(labels, 0.1, seed=3)
    # by hand: 100 x 0.1 = 10, 50 x 0.1 = 5, 10 x 0.1 = 1, 25 x 0.1 = 2.5 -> 3 (halves up)
    assert Counter(labels[subset].tolist()) == {0: 10, 1: 5, 2: 1, 3: 3}
    assert len(set(subset.tolist())) == len(subset) == 19
    assert subset.min() >= 0 and subset.max() < len(labels) and list(subset) == sorted(subset)
    assert np.array_equal(subset, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(subset, balanced_subset(labels, 0.1, seed=4))
    assert Counter(labels[balanced_subset(labels, 0.01, seed=3)].tolist()) == {0: 1, 1: 1, 2: 1, 3: 1}  # >= 1
    assert subset_hash(subset) == subset_hash(subset[::-1]) != subset_hash(balanced_subset(labels, 0.1, seed=4))
    with pytest.raises(UserError, match="label_fraction"):
        balanced_subset(labels, 1.5, seed=0)


@pytest.fixture
def folder(tmp_path):
    """An ImageFolder of two classes with ImageNet-style file names."""
    for wnid, count in (("n01", 3), ("n02", 2)):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG")
    return open_dataset(str(tmp_path / "train"))


def test_subset_file_of_image_names(folder, tmp_path):
    listing = tmp_path / "subset.txt"
    listing.write_text("n02_1.JPEG\n\nn01/n01_0.JPEG\n")
    subset = subset_from_file(listing, folder)
    assert [folder.samples[i][0].split("/")[-1] for i in subset] == ["n01_0.JPEG", "n02_1.JPEG"]
    listing.write_text("n01_0.JPEG\nn02_1.JPEG\nn03_7.JPEG\n")
    with pytest.raises(UserError, match=rf"^{listing}, line 3: 'n03_7.JPEG' is not an image of the training set"):
        subset_from_file(listing, folder)


def test_subset_file_of_indices_for_array_data(tmp_path):
    dataset = ArrayImageDataset(np.zeros((10, 2, 2), np.uint8), list(range(10)), [str(c) for c in range(10)])
    listing = tmp_path / "indices.txt"
    listing.write_text("7\n2\n")
    assert subset_from_file(listing, dataset).tolist() == [2, 7]
    for text, line in (("2\n10\n", 2), ("x\n", 1), ("3\n3\n", 2)):
        listing.write_text(text)
        with pytest.raises(UserError, match=f"^{listing}, line {line}: "):
            subset_from_file(listing, dataset)


def probe_config(shapes_root, tmp_path, **overrides):
    values = {"checkpoint": "random:resnet18:cifar:8", "train": f"shapes:{shapes_root}@train",
              "val": f"shapes:{shapes_root}@val", "image_size": 32, "workers": 0, "progress": False,
              "tensorboard": False, "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"),
              "optimizer": "sgd", "batch_size": 8, "eval_batch_size": 64, **overrides}
    return load_config(None, LINEAR_DEFAULTS, [f"{k}={v}" for k, v in values.items()])


@pytest.fixture
def seen(monkeypatch):
    """Labels of every training sample and the number of validation samples each epoch."""
    seen = {"train": [], "val": []}
    train_epoch, evaluate = linear_trainer.train_epoch, linear_trainer.evaluate

    def counting_train_epoch(fc, optimizer, batches, *args, **kwargs):
        batches = list(batches)
        seen["train"].append(torch.cat([labels for _, labels in batches]).tolist())
        return train_epoch(fc, optimizer, batches, *args, **kwargs)

    def counting_evaluate(fc, batches, *args, **kwargs):
        batches = list(batches)
        seen["val"].append(sum(len(labels) for _, labels in batches))
        return evaluate(fc, batches, *args, **kwargs)

    monkeypatch.setattr(linear_trainer, "train_epoch", counting_train_epoch)
    monkeypatch.setattr(linear_trainer, "evaluate", counting_evaluate)
    return seen


@pytest.mark.parametrize("mode,epochs", [("cached", 2), ("protocol", 1)])
def test_probe_trains_on_exactly_the_subset(shapes_root, tmp_path, seen, mode, epochs):
    targets = np.asarray(open_dataset(f"shapes:{shapes_root}@train").targets)  # 6 classes x 12
    expected = balanced_subset(targets, 0.25, seed=1)  # 3 per class
    record = run_linear(probe_config(shapes_root, tmp_path, mode=mode, epochs=epochs, label_fraction=0.25,
                                     subset_seed=1), CPU)
    settings = record["settings"]
    assert settings["subset_size"] == len(expected) == 18 and settings["subset_hash"] == subset_hash(expected)
    assert (settings["label_fraction"], settings["subset_seed"], settings["subset_file"]) == (0.25, 1, "")
    assert record["trial"] == 1 and record["protocol"] == ("linear" if mode == "protocol" else "linear-cached")
    assert len(seen["train"]) == epochs
    for labels in seen["train"]:  # every sample of the subset once per epoch, and nothing else
        assert sorted(labels) == sorted(targets[expected].tolist())
    assert seen["val"] == [len(open_dataset(f"shapes:{shapes_root}@val"))] * epochs  # full val set


def test_subset_file_and_full_labels_records(shapes_root, tmp_path, seen):
    train = open_dataset(f"shapes:{shapes_root}@train")
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(path.split("/")[-1] for path, _ in train.samples[:2]) + "\n")
    record = run_linear(probe_config(shapes_root, tmp_path / "file", mode="cached", epochs=1,
                                     subset_file=str(listing)), CPU)
    assert record["settings"]["subset_size"] == 2 and record["settings"]["subset_hash"] == subset_hash([0, 1])
    assert seen["train"][-1] == [train.targets[0], train.targets[1]] and record["trial"] is None
    full = run_linear(probe_config(shapes_root, tmp_path / "full", mode="cached", epochs=1), CPU)
    assert full["settings"]["subset_size"] == len(train) and full["settings"]["subset_hash"] is None
    with pytest.raises(UserError, match="different linear probe"):  # a full-label state is not resumed
        run_linear(probe_config(shapes_root, tmp_path / "full", mode="cached", epochs=1, label_fraction=0.5), CPU)


def test_label_fraction_and_subset_file_exclude_each_other(shapes_root, tmp_path):
    listing = tmp_path / "s.txt"
    listing.write_text("00000.png\n")
    with pytest.raises(UserError, match="label_fraction and subset_file are both set"):
        check_linear_config(probe_config(shapes_root, tmp_path, label_fraction=0.1, subset_file=str(listing)))
    with pytest.raises(UserError, match="subset_file .*missing.txt: no such file"):
        check_linear_config(probe_config(shapes_root, tmp_path, subset_file=str(tmp_path / "missing.txt")))


def test_cli_flags_set_the_subset_keys(shapes_root, tmp_path, capsys):
    output = tmp_path / "linear.json"
    assert cli.main(["linear", "--checkpoint", "random:resnet18:cifar:8", "--train", f"shapes:{shapes_root}@train",
                     "--val", f"shapes:{shapes_root}@val", "--image-size", "32", "--workers", "0", "--no-progress",
                     "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run"), "--output",
                     str(output), "--mode", "cached", "--optimizer", "sgd", "--epochs", "1",
                     "--label-fraction", "0.5", "--subset-seed", "7", "tensorboard=false"]) == 0
    settings = json.loads(output.read_text())["settings"]
    assert (settings["label_fraction"], settings["subset_seed"], settings["subset_size"]) == (0.5, 7, 36)
    assert "36 labelled images" in capsys.readouterr().out


def test_help_lists_the_subset_flags_and_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["linear", "--help"])
    text = capsys.readouterr().out
    assert all(word in text for word in ("--label-fraction", "--subset-seed", "--subset-file", "label_fraction = 0.0",
                                         "subset_seed = 0", "subset_file = ''"))


def linear_record(top1, fraction=0.0, seed=0, protocol="linear-cached"):
    settings = {"label_fraction": fraction, "subset_seed": seed, "subset_file": ""}
    return build_record(protocol, {"top1": top1, "top5": 99.0}, {"path": "runs/mine/checkpoint_0009.pth.tar",
                        "sha256": "0" * 64, "epochs": 10}, {"name": "fashion-mnist"}, settings, started=0.0,
                        seconds=1.0, trial=seed if fraction else None)


def test_table_averages_subset_seeds_in_their_own_column():
    records = [linear_record(80.0), linear_record(60.0, 0.1, seed=0), linear_record(64.0, 0.1, seed=1),
               linear_record(41.0, 0.01, seed=0)]
    table = table4(measurements(records))
    row = ("mine/checkpoint_0009", "10")
    ten = ("fashion-mnist", "linear top-1 (cached, 10% labels, best epoch)")
    assert list(table.mean.columns) == [("fashion-mnist", "linear top-1 (cached, best epoch)"), ten,
                                        ("fashion-mnist", "linear top-1 (cached, 1% labels, best epoch)")]
    # by hand: mean (60 + 64) / 2 = 62, sample std sqrt(((60-62)^2 + (64-62)^2) / 1) = sqrt(8)
    assert (table.mean.loc[row, ten], table.std.loc[row, ten], table.n.loc[row, ten]) == (62.0, math.sqrt(8), 2)
    assert table.mean.loc[row, ("fashion-mnist", "linear top-1 (cached, best epoch)")] == 80.0
    pivot = comparison_tables(records, layout="pivot", reference="none", metrics=["top1"])["pivot"]
    assert pivot.mean.loc[row, ("fashion-mnist", "linear-cached", "top1", "10% labels")] == 62.0

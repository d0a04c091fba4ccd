"""A damaged file gives its one-line UserError naming the file; a bug in our code stays a traceback."""
from __future__ import annotations

import argparse
import pickle
from collections import OrderedDict

import pytest
import torch
import torchvision

from pretrain.checkpointing import load_checkpoint
from simsiam_eval.checkpoints import files
from simsiam_eval.data.cifar import _unpickle
from simsiam_eval.errors import UserError
from simsiam_eval.safe_pickle import _RestrictedUnpickler


def truncated_torch_file(path, legacy: bool = False):
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def bug(*args, **kwargs):
    raise TypeError("a bug in our code")


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_files(tmp_path, monkeypatch, legacy):
    bad = truncated_torch_file(tmp_path / "bad.pt", legacy)
    for load in (files.load_file, load_checkpoint):
        with pytest.raises(UserError, match="bad.pt") as err:
            load(bad)
        assert "\n" not in str(err.value)
    torch.save({"epoch": 1, "args": argparse.Namespace(lr=0.1), "w": torch.ones(2)}, tmp_path / "ns.pt")
    monkeypatch.setattr(files.Placeholder, "__setstate__", bug)  # our hook, run inside torch.load
    with pytest.raises(TypeError, match="a bug in our code"):
        files.load_file(tmp_path / "ns.pt")
    monkeypatch.setattr(torch, "load", bug)  # e.g. a wrong keyword argument in our call
    with pytest.raises(TypeError, match="a bug in our code"):
        load_checkpoint(tmp_path / "ns.pt")


def test_pickles(tmp_path, monkeypatch):
    blob = pickle.dumps({"data": [1] * 1000, "labels": [0]}, protocol=2)
    (tmp_path / "bad.pkl").write_bytes(blob[:-200])
    for load in (files.load_file, _unpickle):
        with pytest.raises(UserError, match="bad.pkl") as err:
            load(tmp_path / "bad.pkl")
        assert "\n" not in str(err.value)
    (tmp_path / "good.pkl").write_bytes(pickle.dumps({"d": OrderedDict()}, protocol=2))
    monkeypatch.setattr(_RestrictedUnpickler, "find_class", bug)  # our hook, run inside the unpickler
    for load in (files.load_file, _unpickle):
        with pytest.raises(TypeError, match="a bug in our code"):
            load(tmp_path / "good.pkl")


def test_transfer_config_overrides(monkeypatch):
    pytest.importorskip("detectron2", reason="detectron2 not installed (see ../shared/DETECTRON2.md)")
    import transfer.trainer
    from transfer.configs import config_dir
    from simsiam_eval.config import load_config
    from transfer.defaults import TRANSFER_DEFAULTS
    from transfer.run import resolve_config

    config = config_dir() / "pascal_voc0712_R_50_C4.yaml"
    with pytest.raises(UserError, match=r"with overrides MODEL\.NOPE 1: Non-existent key: MODEL\.NOPE$"):
        resolve_config(load_config(None, TRANSFER_DEFAULTS, ["task=voc07", "opts=[MODEL.NOPE, '1']"]), config)

    def asserting(cfg):
        assert False, "an assertion of our code"

    monkeypatch.setattr(transfer.trainer, "add_stem_config", asserting)
    with pytest.raises(AssertionError, match="an assertion of our code"):
        resolve_config(load_config(None, TRANSFER_DEFAULTS, ["task=voc07"]), config)


def test_linear_probe_state(tmp_path, monkeypatch):
    from simsiam_eval.linear import trainer

    fc = torch.nn.Linear(4, 2)
    probe = trainer.LinearTrainer(fc, torch.optim.SGD(fc.parameters(), lr=0.1), 0.1, 2, tmp_path, {"a": 1})
    truncated_torch_file(tmp_path / trainer.LinearTrainer.STATE_NAME)
    with pytest.raises(UserError, match=r"linear_state\.pth: .*truncated.*; it is a saved linear-probe state") as excinfo:
        probe.resume()
    assert "\n" not in str(excinfo.value)
    torch.save({"fc": fc.state_dict()}, tmp_path / trainer.LinearTrainer.STATE_NAME)
    monkeypatch.setattr(trainer.torch, "load", bug)
    with pytest.raises(TypeError, match="a bug in our code"):
        probe.resume()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_by_every_reader(tmp_path, capsys, value):
    from simsiam_eval.checkpoints import read_checkpoint
    from simsiam_eval.cli import main

    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = value
    torch.save({"state_dict": {f"module.encoder.{k}": v for k, v in state.items()}}, tmp_path / "diverged.pth.tar")
    with pytest.raises(UserError, match=r"diverged.pth.tar: tensor layer2.0.conv1.weight holds 1 NaN/Inf"):
        read_checkpoint(tmp_path / "diverged.pth.tar")
    capsys.readouterr()
    for argv in (["convert", str(tmp_path / "diverged.pth.tar"), str(tmp_path / "out.pth")],
                 ["knn", "--checkpoint", str(tmp_path / "diverged.pth.tar"), "--train", "x", "--val", "y"],
                 ["linear", "--checkpoint", str(tmp_path / "diverged.pth.tar"), "--train", "x", "--val", "y"]):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert "layer2.0.conv1.weight" in err and "diverged.pth.tar" in err and "\n" not in err, argv
    assert not (tmp_path / "out.pth").exists()


def test_a_bug_in_the_record_check_is_not_taken_for_a_damaged_file(tmp_path, monkeypatch):
    import zipfile

    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    monkeypatch.setattr(zipfile.ZipFile, "testzip", bug)
    with pytest.raises(TypeError, match="a bug in our code"):
        files.load_file(tmp_path / "good.pt")

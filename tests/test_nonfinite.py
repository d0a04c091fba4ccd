"""A NaN/Inf loss stops pretraining and the linear probe with one line naming the epoch, the step and the
last good checkpoint, before the step touches the weights; the saved state stays and a re-run resumes."""
from __future__ import annotations

import pytest
import torch

import pretrain.train as pretrain_train
import simsiam_eval.linear.trainer as linear_trainer
from simsiam_eval.errors import UserError
from simsiam_eval.linear.evaluate import run_linear
from test_linear import CPU, probe_config
from test_pretrain import pretrain


def nan_at_call(function, bad_call: int):
    """``function`` whose ``bad_call``-th call (1-based) returns NaN instead."""
    calls = {"n": 0}

    def patched(*args, **kwargs):
        calls["n"] += 1
        out = function(*args, **kwargs)
        return out * float("nan") if calls["n"] == bad_call else out

    return patched


def test_pretraining_stops_at_a_nan_loss_and_resumes(shapes_root, tmp_path, monkeypatch, capsys):
    steps_per_epoch = 3  # 72 shapes training images, batch 24, drop_last
    monkeypatch.setattr(pretrain_train, "paired_views_loss",
                        nan_at_call(pretrain_train.paired_views_loss, steps_per_epoch + 3))
    capsys.readouterr()
    assert pretrain(shapes_root, tmp_path, "epochs=2") != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NaN or Inf at epoch 2, step 3" in err and "checkpoint_0000.pth.tar" in err
    first = torch.load(tmp_path / "checkpoint_0000.pth.tar", weights_only=True)["state_dict"]
    assert not (tmp_path / "checkpoint_0001.pth.tar").exists()
    monkeypatch.undo()
    assert pretrain(shapes_root, tmp_path, "epochs=2") == 0
    assert torch.load(tmp_path / "checkpoint_0001.pth.tar", weights_only=True)["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in first.values() if v.is_floating_point())


def test_linear_probe_stops_at_a_nan_loss_before_the_step(shapes_root, tmp_path, monkeypatch):
    cfg = probe_config(shapes_root, tmp_path, mode="cached", epochs=3)
    calls_per_epoch = 3 + 1  # 72 training images in batches of 32, then 24 val images in one batch
    monkeypatch.setattr(linear_trainer.F, "cross_entropy", nan_at_call(linear_trainer.F.cross_entropy,
                                                                       calls_per_epoch + 2))
    with pytest.raises(UserError, match=r"NaN or Inf at epoch 2, step 2; .*linear_state.pth \(epoch 1\)") as err:
        run_linear(cfg, CPU)
    assert "\n" not in str(err.value)
    state = torch.load(tmp_path / "run" / "linear_state.pth", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["fc"].values())
    monkeypatch.undo()
    assert run_linear(cfg, CPU)["settings"]["resumed_from_epoch"] == 1

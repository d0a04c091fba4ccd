"""``simsiam-eval transfer`` reads its keys like every other command: defaults < --config < flags < key=value."""
from __future__ import annotations

import pytest

import transfer.run
from simsiam_eval.cli import main
from simsiam_eval.commands.transfer import split_overrides


@pytest.fixture
def captured(monkeypatch):
    """The config ``run_transfer`` would receive."""
    seen = {}
    monkeypatch.setattr(transfer.run, "run_transfer", lambda cfg: seen.update(cfg))
    return seen


def test_split_keeps_detectron2_pairs_whole():
    ours, d2 = split_overrides(["trials=2", "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", "a=b", "seed=3"])
    assert ours == ["trials=2", "seed=3"]
    assert d2 == ["SOLVER.MAX_ITER", "5", "OUTPUT_DIR", "a=b"]  # a value is never taken for a key


def test_defaults_flags_file_and_overrides(tmp_path, captured):
    config = tmp_path / "mine.yaml"
    config.write_text("checkpoint: ckpt.pth.tar\ntask: voc07\ntrials: 3\nseed: 7\nopts: [SOLVER.BASE_LR, 0.01]\n")
    assert main(["transfer", "--config", str(config), "--trials", "2", "--tag", "a", "--tag", "b",
                 "num_gpus=4", "SOLVER.MAX_ITER", "5"]) == 0
    assert captured["checkpoint"] == "ckpt.pth.tar" and captured["task"] == "voc07"
    assert captured["trials"] == 2            # the flag beats the file
    assert captured["seed"] == 7              # the file beats the default
    assert captured["num_gpus"] == 4          # key=value, converted to the default's type
    assert captured["tags"] == ["a", "b"]
    assert captured["opts"] == [ "SOLVER.BASE_LR", 0.01, "SOLVER.MAX_ITER", "5"]
    assert captured["ims_per_device"] == 0 and captured["dist_url"] == "auto" and captured["quiet"] is False


def test_unknown_key_names_the_closest(capsys, captured):
    assert main(["transfer", "--checkpoint", "x", "--task", "voc07", "trails=2"]) == 2
    assert "unknown config key 'trails'" in capsys.readouterr().err and not captured


def test_help_lists_every_key(capsys):
    from transfer.defaults import TRANSFER_DEFAULTS

    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    text = capsys.readouterr().out
    assert all(f"  {key} = " in text for key in TRANSFER_DEFAULTS)


def test_missing_checkpoint_is_named(capsys):
    assert main(["transfer", "--task", "voc07"]) == 2
    assert "checkpoint is empty" in capsys.readouterr().err

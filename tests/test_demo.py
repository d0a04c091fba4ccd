"""The demo's bookkeeping (the full run takes minutes; `simsiam-eval demo` prints its numbers)."""
from __future__ import annotations

import pytest

from simsiam_eval.cli import main
from simsiam_eval.commands.demo import Steps, _publish_once, detection_task, summary
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import read_records


def test_evaluations_are_recorded_once(tmp_path):
    calls = []

    def evaluate():
        calls.append(1)
        return build_record("knn", {"top1": 42.0}, {"path": "x.pth.tar", "sha256": "0" * 64, "epochs": 5},
                            {"val": "shapes:d@val"}, {}, 0.0, 1.0, tags=["demo"], name="SimSiam (demo)")

    db, json_path = tmp_path / "results.db", tmp_path / "eval" / "knn.json"
    first = _publish_once(json_path, db, evaluate, trial=2)
    again = _publish_once(json_path, db, evaluate, trial=2)
    assert len(calls) == 1 and first == again
    stored = read_records(db)
    assert len(stored) == 1
    assert stored[0]["checkpoint"]["name"] == "SimSiam (demo)" and stored[0]["checkpoint"]["epochs"] == 5
    assert stored[0]["trial"] == 2 and stored[0]["tags"] == ["demo"] and stored[0]["data"]["name"] == "shapes"


def test_summary_says_where_everything_is(tmp_path):
    steps = Steps()
    steps.run("1/7 data: generate", lambda: None)
    text = summary(tmp_path, steps, [tmp_path / "tables" / "table4.md"], [tmp_path / "plots" / "a.png"],
                   "skipped: no detectron2")
    for part in ("results.db", "table4.md", "a.png", "pretrain", "skipped: no detectron2", "1/7 data"):
        assert part in text
    assert len(text.splitlines()) <= 12


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    assert "--output-dir" in capsys.readouterr().out


def test_detection_config_fits_the_checkpoint():
    from transfer.configs import task_config

    assert detection_task("resnet50", "imagenet", 64) == ("smoke/faster_rcnn_shapes_voc.yaml", [])
    config, overrides = detection_task("resnet18", "cifar", 16)
    assert config == "smoke/faster_rcnn_shapes_voc_r18_cifar.yaml" and task_config(config).is_file()
    assert dict(zip(overrides[::2], overrides[1::2])) == {
        "MODEL.RESNETS.DEPTH": "18", "MODEL.RESNETS.STEM_TYPE": "cifar",
        "MODEL.RESNETS.STEM_OUT_CHANNELS": "16", "MODEL.RESNETS.RES2_OUT_CHANNELS": "16"}
    assert detection_task("resnet34", "imagenet", 64)[1][1::2] == ["34", "imagenet", "64", "64"]
    assert detection_task("resnet101", "imagenet", 64) is None


def test_convert_step_says_which_check_ran_without_detectron2(monkeypatch, tmp_path, capsys):
    from test_convert import hide_module

    from simsiam_eval.commands.demo import convert_step

    hide_module(monkeypatch, "detectron2")
    weights, words = convert_step(tmp_path, "random:resnet18")
    assert weights == tmp_path / "detectron2" / "backbone.pkl" and weights.is_file()
    assert "verified" in words and "torchvision pooled features (detectron2 not installed" in words
    assert "skipped" not in capsys.readouterr().out


def test_a_wrong_conversion_is_not_reported_as_verified(monkeypatch, tmp_path, capsys):
    """A writer that swaps a BN layer's running mean and variance (same shape), Detectron2 absent: no
    "verified", no file, and the reason printed."""
    from test_convert import hide_module

    from simsiam_eval.checkpoints import writers
    from simsiam_eval.commands.demo import convert_step

    hide_module(monkeypatch, "detectron2")
    right = writers.detectron2_model

    def swapped(ckpt):
        model = right(ckpt)
        mean, var = "res3.0.conv2.norm.running_mean", "res3.0.conv2.norm.running_var"
        model[mean], model[var] = model[var], model[mean]
        return model

    monkeypatch.setattr(writers, "detectron2_model", swapped)
    weights, words = convert_step(tmp_path, "random:resnet18")
    assert weights is None and not (tmp_path / "detectron2" / "backbone.pkl").exists()
    assert "verification failed" in words and "(verified" not in words
    assert "not converted" in capsys.readouterr().out

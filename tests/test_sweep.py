"""Epoch sweeps: top-1 of a run's evaluated checkpoints against epoch, beside the run's kNN monitor."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from simsiam_eval.cli import main
from simsiam_eval.errors import UserError
from simsiam_eval.report.sweep import checkpoint_epoch, monitor_label, plot_epoch_sweep, sweep_points
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import publish_record

KNN = "kNN k=20, T=0.1 (fashion-mnist, 500 val images)"
LINEAR = "linear-cached (fashion-mnist, 500 val images)"


def knn_record(path, epochs, top1, ks=(20,)):
    metrics = {"top1": top1, "top5": 99.0}
    if len(ks) > 1:
        metrics.update({f"top1_k{k}": top1 + i for i, k in enumerate(ks)})
    return build_record("knn", metrics, {"path": str(path), "sha256": "ab" * 32, "epochs": epochs},
                        {"name": "fashion-mnist", "num_val": 500}, {"k": list(ks), "temperature": 0.1}, 0.0, 1.0)


def make_run(tmp_path):
    """A run folder with config.yaml and a hand-written metrics.jsonl (monitor every epoch, epoch 2
    logged twice as after a resume), and records of its init, epoch-2 and epoch-4 checkpoints (out of
    order), a linear record, and a kNN record of another run's checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "knn:\n  train: fashion-mnist:/data/fm@train\n  val: fashion-mnist:/data/fm@test\n  k: [200]\n"
        "  temperature: 0.07\n")
    rows = [{"epoch": e, "loss": -0.5, "collapse_std": 0.04, "knn_top1": 40.0 + e} for e in (1, 2, 2, 3, 4)]
    rows[1]["knn_top1"] = 0.0  # the line the resumed run wrote again: the later one wins
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = [knn_record(run / "checkpoint_0003.pth.tar", 4, 61.5),
               knn_record(run / "init.pth.tar", 0, 20.0),
               knn_record(run / "checkpoint_0001.pth.tar", 2, 55.0),
               knn_record(tmp_path / "other" / "checkpoint_0001.pth.tar", 2, 99.0),
               build_record("linear-cached", {"top1": 70.0}, {"path": str(run / "checkpoint_0003.pth.tar"),
                                                               "epochs": 4},
                            {"name": "fashion-mnist", "num_val": 500}, {}, 0.0, 1.0)]
    return run, records


def test_points_are_the_runs_checkpoints_by_epoch(tmp_path):
    run, records = make_run(tmp_path)
    points = sweep_points(records, run)
    knn = points[points.curve == KNN]
    assert knn.epoch.tolist() == [0, 2, 4]
    assert knn.top1.tolist() == [20.0, 55.0, 61.5]
    assert knn.checkpoint.tolist() == ["init.pth.tar", "checkpoint_0001.pth.tar", "checkpoint_0003.pth.tar"]
    assert points[points.curve == LINEAR][["epoch", "top1"]].values.tolist() == [[4, 70.0]]
    assert 99.0 not in points.top1.tolist()  # the other run's record


def test_epoch_from_the_file_name_only_when_the_record_has_none(tmp_path):
    assert checkpoint_epoch({"checkpoint": {"path": "run/checkpoint_0009.pth.tar", "epochs": None}}) == 10
    assert checkpoint_epoch({"checkpoint": {"path": "run/init.pth.tar"}}) == 0
    assert checkpoint_epoch({"checkpoint": {"path": "run/checkpoint_0009.pth.tar", "epochs": 7}}) == 7
    assert checkpoint_epoch({"checkpoint": {"path": "random:resnet18"}}) is None


def test_one_curve_per_k_and_trials_averaged(tmp_path):
    run = tmp_path / "run"
    records = [knn_record(run / "checkpoint_0000.pth.tar", 1, top1, ks=(10, 20)) for top1 in (50.0, 52.0)]
    points = sweep_points(records, run)
    assert points.curve.str.contains("k=10").sum() == 1 and points.curve.str.contains("k=20").sum() == 1
    assert points.top1.tolist() == [51.0, 52.0] and points.n.tolist() == [2, 2]


def test_without_run_dir_the_records_must_share_a_folder(tmp_path):
    run, records = make_run(tmp_path)
    with pytest.raises(UserError, match="2 folders"):
        sweep_points(records)
    assert len(sweep_points([r for r in records if "other" not in r["checkpoint"]["path"]])) == 4


def test_plot_and_csv(tmp_path):
    run, records = make_run(tmp_path)
    written = plot_epoch_sweep(records, run, run / "sweep")
    assert sorted(p.name for p in written) == ["sweep.csv", "sweep.png", "sweep.svg"]
    with Image.open(run / "sweep.png") as image:
        assert image.format == "PNG" and image.width > 300
    pd.testing.assert_frame_equal(pd.read_csv(run / "sweep.csv"), sweep_points(records, run))
    assert monitor_label(run) == ("run's kNN monitor (k=200, T=0.07; bank fashion-mnist@train, "
                                  "queries fashion-mnist@test)")


def test_cli_writes_the_sweep_and_prints_the_points(tmp_path, capsys):
    run, records = make_run(tmp_path)
    db = tmp_path / "suite.db"
    for record in records:
        publish_record(record, db_path=db)
    assert main(["plot", "--sweep", str(run), "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert (run / "sweep.png").stat().st_size > 1000 and (run / "sweep.csv").is_file()
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[0].isdigit()}
    assert lines["0"] == ["-", "20.00", "-"]  # epoch 0: no monitor, kNN, no linear
    assert lines["2"] == ["42.00", "55.00", "-"]
    assert lines["4"] == ["44.00", "61.50", "70.00"]
    assert main(["plot", "--sweep", str(tmp_path / "other"), "--results", str(db)]) == 2  # no folder
    assert main(["plot"]) == 2

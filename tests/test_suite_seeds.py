"""``seeds`` in a suite: one pretraining run per seed of an entry (named, placed and seeded per seed), each
evaluated under its own name; the study report sums a variant's seeds up (kNN top-1 as mean ± std, the
majority verdict), against values worked out by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from simsiam_eval.cli import main
from simsiam_eval.config import save_config
from simsiam_eval.errors import UserError
from simsiam_eval.results.records import build_record
from simsiam_eval.results.store import read_records
from simsiam_eval.suite.spec import Suite, read_suite
from simsiam_eval.suite.study import write_study

ROOT_D = math.sqrt(512)
STUDY = ("experiment,name,paper_setting,value,verdict,source\n"
         "fig2,A,with stop-gradient,67.7,works,paper\n"
         "fig2,B,without stop-gradient,0.1,collapses,paper\n"
         "table1,C,(a) no predictor,0.1,collapses,paper\n"
         "table1,D,(b) fixed random init,1.5,does not converge,paper\n")
SMALL = {"epochs": 3, "batch_size": 64, "model": {"dim": 512}}


def write_suite(tmp_path: Path, pretrain: list[dict], **extra) -> Path:
    tree = {"name": "seeds", "output_dir": str(tmp_path / "out"), "pretrain": pretrain,
            "datasets": {"d": {"train": "shapes:/nowhere@train", "val": "shapes:/nowhere@val"}},
            "evaluations": {"knn": {"protocol": "knn", "k": [5], "datasets": ["d"]}}, **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_an_entrys_seeds_are_runs_of_their_own(tmp_path):
    suite = read_suite(write_suite(tmp_path, [
        {"name": "A", "overrides": SMALL, "seeds": [0, 2], "init": "A-init"},
        {"name": "B", "overrides": SMALL},  # the suite's seeds
        {"name": "C", "overrides": {**SMALL, "seed": 5}, "seeds": None}]), ["seeds=[1,3,4]"])
    runs = {run.name: run for run in suite.pretrain}
    assert list(runs) == ["A/seed0", "A/seed2", "B/seed1", "B/seed3", "B/seed4", "C"]
    assert [runs[n].config.seed for n in runs] == [0, 2, 1, 3, 4, 5]
    assert [runs[n].entry for n in runs] == ["A", "A", "B", "B", "B", "C"]
    assert Path(runs["A/seed2"].config.output_dir) == tmp_path / "out" / "pretrain" / "A" / "seed2"
    assert Path(runs["C"].config.output_dir) == tmp_path / "out" / "pretrain" / "C"
    assert runs["B/seed3"].config.epochs == 3  # the entry's overrides apply to every seed
    names = {c.name: c for c in suite.checkpoints}
    assert names["A/seed2"].source == str(runs["A/seed2"].final_checkpoint) and names["A/seed2"].pretrain == "A/seed2"
    assert names["A-init/seed0"].source.endswith("seed0/init.pth.tar")
    assert "C" in names and "A" not in names


@pytest.mark.parametrize("seeds, problem", [
    ("[]", "got \\[\\]"),
    ("[1, 1]", "got \\[1, 1\\]"), ("[-1]", "got \\[-1\\]"), ("[true]", "got \\[True\\]"), ("3", "got 3")])
def test_bad_seeds_name_the_file_and_entry(tmp_path, seeds, problem):
    path = write_suite(tmp_path, [{"name": "A", "overrides": SMALL}])
    message = f"seeds must be a list of distinct non-negative integers, {problem}$"
    with pytest.raises(UserError, match=rf"suite\.yaml: pretrain\[0\]\.seeds: {message}"):
        read_suite(path, [f"pretrain.0.seeds={seeds}"])
    with pytest.raises(UserError, match=rf"suite\.yaml: seeds: {message}"):
        read_suite(path, [f"seeds={seeds}"])


def test_a_seed_in_both_seeds_and_overrides_is_refused(tmp_path):
    for overrides in ({**SMALL, "seed": 1}, ["seed=1"]):
        path = write_suite(tmp_path, [{"name": "A", "overrides": overrides, "seeds": [0, 1]}])
        with pytest.raises(UserError, match=r"suite\.yaml: pretrain\[0\]: give the seed in 'seeds' or in "
                                            r"'overrides', not both"):
            read_suite(path)


def fake_run(suite: Suite, name: str, std: float, loss: float) -> None:
    """A finished 3-epoch run whose last epoch has collapse std ``std`` x 1/sqrt(d) and loss ``loss``."""
    run = next(r for r in suite.pretrain if r.name == name)
    folder = Path(run.config.output_dir)
    folder.mkdir(parents=True)
    save_config(run.config, folder / "config.yaml")
    rows = [{"epoch": e, "lr": 0.1, "loss": loss, "collapse_std": std / ROOT_D, "collapse_std_median": std / ROOT_D}
            for e in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def knn_record(suite: Suite, name: str, top1: float, feature_std: float) -> dict:
    run = next(r for r in suite.pretrain if r.name == name)
    return build_record("knn", {"top1": top1, "feature_std": feature_std}, {"path": str(run.final_checkpoint)},
                        {"name": "shapes", "num_classes": 5}, {"k": [5]}, 0.0, 1.0, name=name)


def test_the_study_sums_a_variants_seeds_up(tmp_path, capsys):
    """A: works, works, collapses -> works (2 of 3), kNN 60, 62, 67 -> mean 63.0, sample std sqrt(13) = 3.6.
    B: collapses, collapses, seed 2 not run -> collapses (2 of 3). C: works, collapses -> split.
    D: one seed of three, not converged -> not a majority of the three."""
    (tmp_path / "mini.csv").write_text(STUDY)
    suite = read_suite(write_suite(tmp_path, [{"name": n, "overrides": SMALL} for n in "ABD"] +
                                   [{"name": "C", "overrides": SMALL, "seeds": [0, 1]}],
                                   study="mini.csv", seeds=[0, 1, 2]))
    for name, std, loss in [("A/seed0", 0.9, -0.9), ("A/seed1", 0.95, -0.8), ("A/seed2", 0.3, -0.95),
                            ("B/seed0", 0.3, -0.99), ("B/seed1", 0.5, -0.98),
                            ("C/seed0", 0.9, -0.9), ("C/seed1", 0.4, -0.9), ("D/seed1", 0.9, -0.2)]:
        fake_run(suite, name, std, loss)
    records = [knn_record(suite, "A/seed0", 60.0, 0.12), knn_record(suite, "A/seed1", 62.0, 0.15),
               knn_record(suite, "A/seed2", 67.0, 1.9e-7), knn_record(suite, "B/seed0", 20.0, 0.004)]
    written = write_study(suite, records)

    fig2 = pd.read_csv(suite.output_dir / "tables" / "study_fig2.csv", dtype=str, keep_default_na=False)
    fig2 = fig2.set_index("variant").to_dict("index")
    assert fig2["A"]["kNN top-1 (ours)"] == "63.0 ± 3.6 (n=3)"
    assert (fig2["A"]["our verdict"], fig2["A"]["agrees"]) == ("works (2 of 3)", "yes")
    assert fig2["A"]["collapse std x sqrt(d) (final epoch)"] == "0.900 / 0.950 / 0.300"
    assert fig2["A"]["final loss"] == "-0.900 / -0.800 / -0.950"
    assert fig2["A"]["pool5 std x sqrt(d)"] == "0.12 / 0.15 / 1.9e-07"
    assert fig2["B"]["kNN top-1 (ours)"] == "20.0 (n=1)"
    assert (fig2["B"]["our verdict"], fig2["B"]["agrees"]) == ("collapses (2 of 3)", "yes")
    assert fig2["B"]["median batch"] == "0.300 / 0.500 / not run"
    table1 = pd.read_csv(suite.output_dir / "tables" / "study_table1.csv", dtype=str, keep_default_na=False)
    table1 = table1.set_index("variant").to_dict("index")
    assert (table1["C"]["our verdict"], table1["C"]["agrees"]) == ("split: collapses 1, works 1", "no")
    assert table1["C"]["kNN top-1 (ours)"] == "not run"
    assert table1["D"]["our verdict"] == "split: does not converge 1, not run 2"
    out = capsys.readouterr().out
    assert "A, B: one run per seed (NAME/seedS); kNN top-1 as mean ± sample std (n runs)" in out
    assert "C, D: one run per seed" in out
    assert "D/seed1: unfinished" not in out
    assert (suite.output_dir / "plots" / "study_fig2.svg") in written
    svg = (suite.output_dir / "plots" / "study_fig2.svg").read_text()
    assert "A/seed2" in svg  # one curve per seed, each variant's in one colour (C0, C1; C2 only per run)
    assert "#1f77b4" in svg and "#ff7f0e" in svg and "#2ca02c" not in svg and "stroke-dasharray" in svg


def test_seeds_pretrain_and_evaluate_one_run_each(tmp_path, shapes_root, capsys):
    """Two seeds of one entry train two different networks from the same config, each evaluated under
    its own name; the study file names the entry."""
    overrides = {"epochs": 1, "workers": 0, "batch_size": 24, "tensorboard": False, "knn": {"every_n_epochs": 0},
                 "data": {"train": f"shapes:{shapes_root}@train"}, "model": {"width": 8, "dim": 64, "pred_dim": 16}}
    (tmp_path / "fig2.csv").write_text("experiment,name,paper_setting,value,verdict,source\n"
                                       "fig2,run,with stop-gradient,67.7,works,paper\n")
    path = write_suite(tmp_path, [{"name": "run", "config": "pretrain/shapes_cpu", "overrides": overrides,
                                   "seeds": [3, 4]}], study="fig2.csv",
                       datasets={"d": {"train": f"shapes:{shapes_root}@train", "val": f"shapes:{shapes_root}@val"}})
    assert main(["suite", str(path), "evaluations.knn.workers=0"]) == 0
    out = capsys.readouterr().out
    assert "pretrain-run-seed3: checkpoint" in out and "pretrain-run-seed4: checkpoint" in out
    records = {r["checkpoint"]["name"]: r for r in read_records(tmp_path / "out" / "results.db")}
    assert set(records) == {"run/seed3", "run/seed4"}
    weights = [torch.load(tmp_path / "out" / "pretrain" / "run" / f"seed{s}" / "checkpoint_0000.pth.tar",
                          map_location="cpu", weights_only=False)["state_dict"] for s in (3, 4)]
    first = next(k for k in weights[0] if k.endswith("conv1.weight"))
    assert not torch.equal(weights[0][first], weights[1][first])
    top1 = [records[f"run/seed{s}"]["metrics"]["top1"] for s in (3, 4)]
    row = pd.read_csv(tmp_path / "out" / "tables" / "study_fig2.csv").iloc[0]
    mean, std = (top1[0] + top1[1]) / 2, abs(top1[0] - top1[1]) / math.sqrt(2)
    assert row["kNN top-1 (ours)"] == f"{mean:.1f} ± {std:.1f} (n=2)"

"""The study report (suite key ``study:``): our verdict per run against hand-worked numbers, the tables
beside the paper's verdicts, a missing run, the check of the study file's names, and the figures."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from simsiam_eval.cli import main
from simsiam_eval.config import flatten_values, packaged_config_dir, save_config
from simsiam_eval.errors import UserError
from simsiam_eval.report.measurements import load_reference, reference_files
from simsiam_eval.results.records import build_record
from simsiam_eval.suite.jobs import expand_jobs
from simsiam_eval.suite.outputs import write_outputs
from simsiam_eval.suite.run import finish
from simsiam_eval.suite.spec import Suite, read_suite
from simsiam_eval.suite.study import (EXPERIMENT_TITLES, read_study, reference_levels, resolve_study,
                                      run_verdict, write_study)

ROOT_D = math.sqrt(512)
# dim 512, batch 64, collapse_ratio 0.5: the collapsed floor is 2/sqrt(64) = 0.25 (x 1/sqrt(512)), the
# threshold (0.25 + 0.5 x (1 - 0.25)) / sqrt(512) = 0.625 / sqrt(512).
THRESHOLD_64 = 0.625 / ROOT_D
CONFIG = {"model": {"dim": 512}, "batch_size": 64, "loss": {"similarity": "cosine"}, "monitor": {"collapse_ratio": 0.5}}
STUDY = ("experiment,name,paper_setting,value,verdict,source\n"
         "fig2,A,with stop-gradient,67.7,works,\"paper, Fig. 2\"\n"
         "fig2,B,without stop-gradient,0.1,collapses,\"paper, Fig. 2\"\n"
         "table1,A,(c) default,68.1,works,\"paper, Table 1\"\n"
         "table1,C,(a) no predictor,0.1,collapses,\"paper, Table 1\"\n"
         "table1,D,(d) unstable,,does not converge,\"paper, Table 1\"\n")


def config(**changes) -> dict:
    return {**CONFIG, **changes}


def last(std_times_root_d: float, loss: float = -0.9) -> dict:
    return {"collapse_std": std_times_root_d / ROOT_D, "loss": loss}


def test_collapse_at_the_threshold_of_the_runs_batch():
    assert run_verdict(CONFIG, {"collapse_std": THRESHOLD_64 * 0.999, "loss": -0.9}) == "collapses"
    assert run_verdict(CONFIG, {"collapse_std": THRESHOLD_64 * 1.001, "loss": -0.9}) == "works"
    assert run_verdict(CONFIG, last(0.3)) == "collapses"  # above the floor 0.25, still collapsed
    # batch 16: floor 0.5, threshold 0.75; what works at batch 64 has collapsed at batch 16
    assert run_verdict(config(batch_size=16), last(0.7)) == "collapses"
    assert run_verdict(config(batch_size=16), last(0.76)) == "works"
    # ratio 0.8 at batch 64: threshold 0.25 + 0.8 x 0.75 = 0.85
    assert run_verdict(config(monitor={"collapse_ratio": 0.8}), last(0.84)) == "collapses"
    assert run_verdict(config(monitor={"collapse_ratio": 0.8}), last(0.86)) == "works"


def test_collapse_comes_before_the_loss():
    assert run_verdict(CONFIG, last(0.05, loss=-0.99)) == "collapses"  # no stop-gradient: loss near -1
    assert run_verdict(CONFIG, last(0.05, loss=-0.1)) == "collapses"


def test_loss_that_does_not_converge():
    assert run_verdict(CONFIG, last(0.9, loss=-0.49)) == "does not converge"
    assert run_verdict(CONFIG, last(0.9, loss=-0.51)) == "works"
    assert run_verdict(CONFIG, last(0.9, loss=float("nan"))) == "does not converge"
    assert run_verdict(CONFIG, last(0.9, loss=float("inf"))) == "does not converge"
    cross_entropy = config(loss={"similarity": "cross_entropy"})
    assert run_verdict(cross_entropy, last(0.9, loss=6.2)) == "works"  # no cosine scale: only finiteness counts
    assert run_verdict(cross_entropy, last(0.9, loss=float("nan"))) == "does not converge"


def test_a_config_without_a_key_reads_its_default():
    """An older config.yaml: the pretraining defaults (dim 2048, batch 512, ratio 0.5, cosine) fill in."""
    threshold = (2 / math.sqrt(512) + 0.5 * (1 - 2 / math.sqrt(512))) / math.sqrt(2048)
    assert run_verdict({}, {"collapse_std": threshold * 0.999, "loss": -0.9}) == "collapses"
    assert run_verdict({}, {"collapse_std": threshold * 1.001, "loss": -0.9}) == "works"


def test_collapse_panel_levels():
    healthy, floor = reference_levels(512, 64)
    assert healthy == pytest.approx(1 / ROOT_D)
    assert floor == pytest.approx(2 / math.sqrt(64) / ROOT_D)


def test_packaged_study_file():
    variants = read_study(resolve_study("simsiam_study"))
    assert len(variants) == 29
    assert list(dict.fromkeys(v.experiment for v in variants)) == list(EXPERIMENT_TITLES)
    by_key = {(v.experiment, v.name): v for v in variants}
    assert by_key["table1", "fixed random predictor"].paper_verdict == "does not converge"
    assert by_key["table1", "fixed random predictor"].paper_top1 == 1.5
    assert by_key["table3", "BN all"].paper_top1 is None
    assert by_key["fig2", "no stop-gradient"].paper_verdict == "collapses"
    assert by_key["momentum", "momentum encoder"].paper_top1 == 66.5
    assert [(v.name, v.paper_verdict) for v in variants if v.experiment == "fig2_long"] == [
        ("SimSiam (50 epochs)", "works"), ("no stop-gradient (50 epochs)", "collapses"),
        ("no predictor (50 epochs)", "collapses")]
    assert all(v.source.startswith("Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021 "
                                   "(arXiv:2011.10566), ") for v in variants)
    assert "simsiam_study.csv" not in {p.name for p in reference_files()}  # not published table rows
    assert not load_reference().empty


def test_study_file_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(STUDY.replace("does not converge", "unstable"))
    with pytest.raises(UserError, match=r"bad\.csv: line 6: verdict 'unstable'"):
        read_study(bad)
    with pytest.raises(UserError, match="study file not found: nothing"):
        resolve_study("nothing", tmp_path)


def write_suite(tmp_path: Path, names: list[str], study: str, **extra) -> Path:
    """A suite with a pretraining run per name (dim 512, batch 64, 3 epochs) and a kNN evaluation."""
    pretrain = [{"name": name, "overrides": {"epochs": 3, "batch_size": 64, "model": {"dim": 512}}} for name in names]
    tree = {"name": "study", "output_dir": str(tmp_path / "out"), "pretrain": pretrain,
            "datasets": {"d": {"train": "shapes:/nowhere@train", "val": "shapes:/nowhere@val"}},
            "evaluations": {"knn": {"protocol": "knn", "k": [5], "datasets": ["d"]}}, "study": study, **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def study_suite(tmp_path: Path) -> Suite:
    (tmp_path / "mini.csv").write_text(STUDY)
    return read_suite(write_suite(tmp_path, ["A", "B", "C", "D"], "mini.csv"))  # relative to the suite file


def fake_run(suite: Suite, name: str, stds: list[float], losses: list[float], knn: list[float] | None = None,
             medians: list[float] | None = None) -> None:
    """The run folder pretraining writes: its config.yaml and one metrics.jsonl line per epoch
    (std and median batch std given x sqrt(d); a log without medians is an older one), and a line without
    an epoch."""
    run = next(r for r in suite.pretrain if r.name == name)
    folder = Path(run.config.output_dir)
    folder.mkdir(parents=True)
    save_config(run.config, folder / "config.yaml")
    rows = [{"epoch": e, "lr": 0.1, "collapse_reference": 1 / ROOT_D, "loss": loss, "collapse_std": std / ROOT_D,
             "images_per_sec": 100.0, "seconds": 1.0, **({"knn_top1": knn[e - 1]} if knn else {}),
             **({"collapse_std_median": medians[e - 1] / ROOT_D} if medians else {})}
            for e, (std, loss) in enumerate(zip(stds, losses), 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"note": "no epoch"}\n')


def knn_record(suite: Suite, name: str, top1: float, **metrics: float) -> dict:
    run = next(r for r in suite.pretrain if r.name == name)
    return build_record("knn", {"top1": top1, "top5": 90.0, **metrics}, {"path": str(run.final_checkpoint)},
                        {"name": "shapes", "num_classes": 5}, {"k": [5]}, 0.0, 1.0, name=name)


def read_table(suite: Suite, experiment: str) -> dict[str, dict]:
    frame = pd.read_csv(suite.output_dir / "tables" / f"study_{experiment}.csv", dtype=str, keep_default_na=False)
    return {row["variant"]: row for row in frame.to_dict("records")}


def panels(svg: Path) -> int:
    """The number of axes of a matplotlib SVG."""
    return len(re.findall(r'<g id="axes_\d+"', svg.read_text()))


def test_study_tables_and_figures(tmp_path, capsys):
    """A works (0.9 > 0.625), B collapses (0.3 < 0.625), C ends at loss -0.3 (> -0.5): does not converge,
    against the paper's 'collapses'; C has no kNN record and stopped at epoch 2 of 3; D has no run."""
    suite = study_suite(tmp_path)
    fake_run(suite, "A", [0.8, 0.85, 0.9], [-0.5, -0.8, -0.9], knn=[30.0, 40.0, 50.0])
    fake_run(suite, "B", [0.5, 0.3, 0.3], [-0.9, -0.97, -0.99], knn=[25.0, 22.0, 20.0], medians=[0.5, 0.26, 0.25])
    fake_run(suite, "C", [0.9, 0.9], [-0.2, -0.3])
    other = build_record("knn", {"top1": 99.0}, {"path": "elsewhere/checkpoint_0002.pth.tar"}, {}, {}, 0.0, 1.0, name="x")
    written = write_study(suite, [knn_record(suite, "A", 61.25), knn_record(suite, "B", 20.0, feature_std=1.87e-7),
                                  other])

    fig2, table1 = read_table(suite, "fig2"), read_table(suite, "table1")
    assert list(fig2) == ["A", "B"] and list(table1) == ["A", "C", "D"]  # the study file's order
    assert fig2["A"]["kNN top-1 (ours)"] == "61.2" and fig2["A"]["our verdict"] == "works"
    assert fig2["A"]["collapse std x sqrt(d) (final epoch)"] == "0.900" and fig2["A"]["final loss"] == "-0.900"
    assert (fig2["B"]["our verdict"], fig2["B"]["agrees"], fig2["B"]["paper top-1"]) == ("collapses", "yes", "0.1")
    assert fig2["B"]["collapse std x sqrt(d) (final epoch)"] == "0.300" and fig2["B"]["median batch"] == "0.250"
    assert fig2["A"]["median batch"] == "-"  # a log from before the median was recorded
    assert (fig2["A"]["pool5 std x sqrt(d)"], fig2["B"]["pool5 std x sqrt(d)"]) == ("-", "1.9e-07")  # A: older record
    assert (table1["C"]["our verdict"], table1["C"]["agrees"]) == ("does not converge", "no")
    assert table1["C"]["kNN top-1 (ours)"] == "not run"
    assert table1["D"] == {"variant": "D", "paper setting": "(d) unstable", "paper top-1": "-",
                           "paper verdict": "does not converge", "kNN top-1 (ours)": "not run",
                           "pool5 std x sqrt(d)": "not run", "collapse std x sqrt(d) (final epoch)": "not run", "median batch": "not run",
                           "final loss": "not run",
                           "our verdict": "not run", "agrees": "not run"}
    out = capsys.readouterr().out
    assert "## Fig. 2: stop-gradient" in out and "## Table 1: predictor" in out
    assert "chance level: shapes 20.0%" in out  # 5 classes
    assert "C: unfinished, last logged epoch 2 of 3" in out
    assert "A, C, D: paper, Table 1" in out
    plots = suite.output_dir / "plots"
    for stem in ("study_fig2", "study_table1"):
        for fmt in ("png", "svg"):
            assert (plots / f"{stem}.{fmt}").stat().st_size > 0
            assert plots / f"{stem}.{fmt}" in written
    assert panels(plots / "study_fig2.svg") == 3 and panels(plots / "study_table1.svg") == 1  # curves, bars
    assert {p.suffix for p in written if p.parent.name == "tables"} == {".md", ".tex", ".csv", ".html"}
    assert "\\begin{table}" in (suite.output_dir / "tables" / "study_fig2.tex").read_text()


def test_suite_closing_step_writes_the_study_before_any_record(tmp_path, capsys):
    suite = study_suite(tmp_path)
    fake_run(suite, "A", [], [])  # started, no epoch logged yet
    jobs = expand_jobs(suite)
    finish(suite, jobs, [], only="pretrain-A")  # --only: no closing outputs
    assert not (suite.output_dir / "tables").exists()
    written = write_outputs(suite, [], jobs)
    assert "no records yet" in capsys.readouterr().out
    assert read_table(suite, "fig2")["A"]["our verdict"] == "not run"
    assert not (suite.output_dir / "plots" / "study_fig2.png").exists()  # no run has logged an epoch
    assert (suite.output_dir / "plots" / "study_table1.png") in written


def test_study_names_must_be_pretrain_entries(tmp_path, capsys):
    (tmp_path / "mini.csv").write_text(STUDY)
    path = write_suite(tmp_path, ["A", "B"], "mini.csv")
    with pytest.raises(UserError, match=r"suite\.yaml: study: .*mini\.csv names variants that are not pretrain "
                                        r"entries of the suite: C, D$"):
        read_suite(path)
    packaged = write_suite(tmp_path, ["SimSiam"], "simsiam_study")
    with pytest.raises(UserError, match=r"simsiam_study\.csv names .*: BN all, BN hidden, BN none, SimSiam \(50 epochs\), asymmetric,"):
        read_suite(packaged)
    complete = write_suite(tmp_path, ["A", "B", "C", "D"], "mini.csv")
    assert main(["suite", str(complete), "--dry-run"]) == 0  # a dry run reads the study, writes nothing
    assert main(["suite", str(complete), "--dry-run", "--only", "pretrain-A"]) == 0
    assert "pretrain-A" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    assert read_suite(complete, ["study="]).study is None  # an override turns the study off


def test_a_diverged_run_does_not_converge(tmp_path):
    """Loss and collapse std NaN from the second epoch on: the verdict and Fig. 2 still come out."""
    (tmp_path / "fig2.csv").write_text("experiment,name,paper_setting,value,verdict,source\n"
                                       "fig2,A,with stop-gradient,67.7,works,\"paper, Fig. 2\"\n")
    suite = read_suite(write_suite(tmp_path, ["A"], "fig2.csv"))
    nan = float("nan")
    fake_run(suite, "A", [0.9, nan, nan], [-0.5, nan, nan])
    written = write_study(suite, [])
    row = read_table(suite, "fig2")["A"]
    assert (row["our verdict"], row["agrees"], row["final loss"]) == ("does not converge", "no", "nan")
    assert suite.output_dir / "plots" / "study_fig2.svg" in written


def test_fig2_at_length_runs_the_preset_and_draws_curves(tmp_path):
    """The packaged suite's three long runs differ from each other only in the ablated key, and use the
    long preset (50 epochs, constant lr, blur, lr x wd 2e-4); their experiment is drawn as Fig. 2 is."""
    packaged = read_suite(packaged_config_dir() / "suites" / "simsiam_study.yaml")
    long = {r.name: flatten_values(r.config) for r in packaged.pretrain if r.name.endswith(" (50 epochs)")}
    base = long["SimSiam (50 epochs)"]
    assert (base["epochs"], base["optim.schedule"], base["data.blur"]) == (50, "constant", True)
    assert (base["optim.base_lr"], base["optim.weight_decay"], base["batch_size"]) == (0.4, 2e-3, 64)
    assert base["workers"] == 1  # as screened: the worker count changes which augmentations a batch draws
    changed = {name: {k for k in base if run[k] != base[k] and k != "output_dir"} for name, run in long.items()}
    assert changed == {"SimSiam (50 epochs)": set(), "no stop-gradient (50 epochs)": {"loss.stop_gradient"},
                       "no predictor (50 epochs)": {"model.predictor"}}

    (tmp_path / "long.csv").write_text("experiment,name,paper_setting,value,verdict,source\n"
                                       "fig2_long,A,with stop-gradient,67.7,works,paper\n"
                                       "fig2_long,B,without stop-gradient,0.1,collapses,paper\n")
    suite = read_suite(write_suite(tmp_path, ["A", "B"], "long.csv"))
    fake_run(suite, "A", [0.9, 0.95, 1.0], [-0.8, -0.85, -0.9], knn=[60.0, 65.0, 70.0])
    fake_run(suite, "B", [0.5, 0.0, 0.0], [-0.9, -1.0, -1.0], knn=[50.0, 10.0, 10.0])
    written = write_study(suite, [knn_record(suite, "B", 10.0)])
    table = read_table(suite, "fig2_long")
    assert (table["B"]["our verdict"], table["B"]["agrees"]) == ("collapses", "yes")
    assert suite.output_dir / "plots" / "study_fig2_long.svg" in written
    assert panels(suite.output_dir / "plots" / "study_fig2_long.svg") == 3  # loss, collapse std, kNN monitor
